"""What every request passes before any route sees it, and what keeps bad traffic cheap.

`Guard` (ASGI middleware, outside the `/classify` endpoint and the router):
- Host header check against DNS rebinding: a page on evil.example whose name resolves to
  127.0.0.1 sends `Host: evil.example`; only loopback names and `serving.allowed_hosts` pass.
- JSON only: a POST with a body must say `Content-Type: application/json`. A browser sends
  `text/plain` or a form cross-site without asking first (no CORS preflight); JSON needs a
  preflight, which this service never grants.
- Body size: bodies of the routes it reads are refused beyond `serving.max_request_mb`, then
  handed to `check_body` (e.g. /classify_batch's shape and token budget) before BentoML parses
  them, so a malformed body gets a 4xx with a message instead of a traceback in the log.

`AuthThrottle` counts wrong credentials per client address; `BoundedErrorLog` keeps library
error logs to a few tracebacks a minute whatever the traffic; `parse_json` turns every way a
body can fail to be JSON (including nesting too deep for the parser) into a 400.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from typing import Any, Callable, Iterable, Optional

from starlette.responses import JSONResponse

from services.runtime import BadRequest

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Liveness/readiness probes answer for any Host: orchestrators probe by pod IP; they reveal nothing.
PROBES = frozenset({"/readyz", "/healthz", "/livez"})


def parse_json(raw: bytes) -> Any:
    """The JSON value of a body; BadRequest(400) when it is not JSON. Nesting deeper than the
    parser's recursion limit raises RecursionError in CPython's decoder: that is bad input too."""
    if not raw:
        raise BadRequest("empty request body; expected a JSON object", status=400)
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply", status=400) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"malformed JSON body: {exc}", status=400) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_policy(bind_host: str, allowed: Optional[Iterable[str]]) -> Optional[frozenset[str]]:
    """Host names to answer, or None for any (see `serving.allowed_hosts`)."""
    if allowed is None:
        return LOOPBACK_NAMES if is_loopback(bind_host) else None
    names = frozenset(h.strip().lower().rstrip(".") for h in allowed)
    if "*" in names:
        return None
    return names | LOOPBACK_NAMES


def host_name(header: str) -> str:
    """`name[:port]` or `[v6]:port` -> name, lowercased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0].rstrip(".") if ":" in header else header.rstrip(".")


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: Host check, JSON-only bodies, bounded and pre-checked bodies."""

    def __init__(self, app, hosts: Optional[frozenset[str]], json_routes: Iterable[str],
                 read_routes: Iterable[str] = (), max_body_bytes: int = 64 * 2**20,
                 check_body: Optional[Callable[[str, bytes], None]] = None):
        self.app = app
        self.hosts = hosts
        self.json_routes = frozenset(json_routes)  # POST bodies must be JSON
        self.read_routes = frozenset(read_routes)  # ...and are read and checked here
        self.max_body_bytes = max_body_bytes
        self.check_body = check_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None and path not in PROBES:
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.hosts:
                await _error(400, f"Host {name!r} is not served here (serving.allowed_hosts; "
                                  "loopback names are always allowed)")(scope, receive, send)
                return
        if scope["method"] == "POST" and path in self.json_routes:
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if not is_json_type(ctype):
                await _error(415, f"send the body as JSON with 'Content-Type: application/json'"
                                  f" (got {ctype[:100]!r})")(scope, receive, send)
                return
            if path in self.read_routes:
                await self._read_then_call(scope, receive, send, headers)
                return
        await self.app(scope, receive, send)

    async def _read_then_call(self, scope, receive, send, headers) -> None:
        limit = self.max_body_bytes
        too_large = _error(413, f"request body over {limit} bytes (serving.max_request_mb)")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)  # refused unread
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if self.check_body is not None:
            try:
                self.check_body(scope["path"], raw)
            except BadRequest as exc:
                await _error(exc.status, exc.message)(scope, receive, send)
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as servers do

        await self.app(scope, replay, send)


class AuthThrottle:
    """At most `per_minute` failed credentials per client address per minute (0 = no limit).
    Per worker process; behind a proxy every client shares the proxy's address."""

    MAX_TRACKED = 10_000  # addresses remembered; beyond that the table starts over

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.limit = int(per_minute)
        self.window_s = 60.0
        self._clock = clock
        self._fails: dict[str, list[float]] = {}  # address -> [window start, failures]
        self.refused = 0

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        entry = self._fails.get(client)
        if not self.limit or entry is None:
            return 0.0
        left = entry[0] + self.window_s - self._clock()
        if left <= 0:
            del self._fails[client]
            return 0.0
        if entry[1] >= self.limit:
            self.refused += 1
            return left
        return 0.0

    def failed(self, client: str) -> None:
        if not self.limit:
            return
        now = self._clock()
        entry = self._fails.get(client)
        if entry is None or now - entry[0] >= self.window_s:
            if len(self._fails) >= self.MAX_TRACKED:
                self._fails.clear()
            entry = self._fails[client] = [now, 0]
        entry[1] += 1


class BoundedErrorLog(logging.Filter):
    """Keeps a logger's error output bounded under junk traffic: a client's bad body (a
    validation or HTTP 4xx error) or load shedding is one line without a traceback, and at most
    `per_minute` records pass per minute; the next one that passes says how many were left out."""

    EXPECTED = ("ValidationError", "HTTPException", "BadRequest", "JSONDecodeError",
                "ServiceUnavailable")

    def __init__(self, per_minute: int = 20, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.per_minute = per_minute
        self._clock = clock
        self._window = -1e18
        self._passed = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        if now - self._window >= 60.0:
            self._window, self._passed = now, 0
        if self._passed >= self.per_minute:
            self.suppressed += 1
            return False
        self._passed += 1
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in self.EXPECTED:
            first = (str(exc).splitlines() or [""])[0][:200]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {first}"
            record.args = None
            record.exc_info = record.exc_text = None
        if self.suppressed:
            record.msg = f"{record.getMessage()} ({self.suppressed} similar records left out)"
            record.args = None
            self.suppressed = 0
        return True


def bound_library_logs(per_minute: int = 20) -> None:
    """Install BoundedErrorLog on the loggers that write a traceback per failed request."""
    for name in ("bentoml._internal.server.http_app", "uvicorn.error", "labelloop.serving"):
        logging.getLogger(name).addFilter(BoundedErrorLog(per_minute))
