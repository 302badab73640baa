"""POST /classify as a pure ASGI endpoint in front of the router.

`/classify` is the one hot path: single-text requests at thousands per second. Behind BentoML's
router a request also passes BentoML's request-context middleware, Starlette's exception
middleware, the router, the passive mount's route matching and the mounted app's own middleware
stack before it reaches the handler; together about a quarter of a worker's event-loop time per
request (py-spy, 1-layer model, docs/serving.md). Installed with `add_asgi_middleware`, this
endpoint sits inside BentoML's metrics, tracing and timeout middleware and the connection
recycling, so those still see every request, and answers `/classify` before the router does.
Every other path passes through untouched.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from starlette.responses import JSONResponse

from services.guard import parse_json
from services.runtime import BadRequest

logger = logging.getLogger("labelloop.serving")

Handler = Callable[[Any], Awaitable[JSONResponse]]


class HotRoute:
    """ASGI middleware answering `method path` with `handler(parsed JSON body)`."""

    def __init__(self, app, path: str, get_handler: Callable[[], Handler], method: str = "POST",
                 max_body_bytes: int = 64 * 2**20):
        self.app = app
        self.path, self.method = path, method
        self.max_body_bytes = max_body_bytes
        # A callable, not the handler: the service instance exists only after start-up.
        self.get_handler = get_handler

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if scope["method"] != self.method:
            response = JSONResponse({"error": f"{self.path} accepts {self.method} only"},
                                    status_code=405, headers={"Allow": self.method})
        else:
            response = await self._answer(scope, receive)
        await response(scope, receive, send)

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"error": f"request body over {self.max_body_bytes} bytes "
                                      "(serving.max_request_mb)"}, status_code=413)

    async def _answer(self, scope, receive) -> JSONResponse:
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return self._too_large()  # refused before reading it
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return JSONResponse({"error": "client disconnected"}, status_code=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # chunked upload without a length
                return self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = parse_json(raw) if raw else None
        except BadRequest as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        try:
            handler = self.get_handler()
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        try:
            return await handler(body)
        except Exception as exc:  # noqa: BLE001 - answer now; an exception here hung the client
            logger.exception("POST %s failed", self.path)
            return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service "
                                          "keeps serving"}, status_code=500)
