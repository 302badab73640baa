"""The service's Argilla endpoint, mounted at `/argilla`: `POST /argilla/webhook`.

Argilla's webhook deliveries are checked against their Standard Webhooks signature (the secret
`labelloop argilla setup` stored, annotation/argilla_webhook.py) on the raw body, before it is
parsed, then applied to the labels store. Unsigned: 401; wrongly signed, stale, or no webhook
configured: 403 (wrong signatures count towards `serving.auth_failures_per_minute`); a signed body
that is not an Argilla event: 400.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

logger = logging.getLogger("labelloop.serving.argilla")


def create_app(get_state: Callable[[], Any]) -> FastAPI:
    from services.ls_backend import AuthError, throttled

    app = FastAPI(title="labelloop argilla", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.post("/webhook")
    async def webhook(request: Request):
        from annotation.argilla_webhook import WebhookAuthError, handle_event, verify

        state = get_state()
        body = await request.body()
        event: dict[str, Any] = {}

        def check() -> None:
            try:
                event.update(verify(state.settings, body, dict(request.headers)))
            except WebhookAuthError as exc:
                raise AuthError(exc.status, exc.message, wrong=exc.wrong) from None

        try:
            throttled(request, getattr(state, "auth_throttle", None), check)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            answer = await run_in_threadpool(handle_event, state.settings, event)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if answer.get("skipped"):
            logger.warning("argilla webhook %s: skipped %s", answer.get("type"), answer["skipped"])
        return JSONResponse(answer)

    return app
