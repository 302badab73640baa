"""Spread keep-alive connections over BentoML's workers by closing each after N requests.

BentoML's workers share one listening socket, and each worker accepts every connection that is
waiting when it wakes. A client pool that opens its connections together (every HTTP client
library, most load balancers) therefore lands most of them on one or two workers, and
keep-alive keeps them there: those workers queue while the others idle. Measured with 4 workers
and 64 connections opened at once: 40, 17, 6 and 1 connections per worker.

Answering the Nth request of a connection with `Connection: close` (like nginx's
`keepalive_requests`) makes the client reconnect; reconnects arrive one at a time, and the
worker that is idle is the one waiting in accept, so load drifts to where there is room. The
cost is one TCP handshake per N requests on 127.0.0.1 or a LAN. Each connection's N is drawn
between N/2 and 3N/2, so a pool opened together does not reconnect together (which would
recreate the pile-up).

A count alone moves slow connections slowly: a client sending 10 requests/s keeps its worker
for 10 s at N = 100, long enough for an unlucky worker to queue far behind the others. So a
connection is also closed once it is older than `max_age_s` (jittered the same way), like
gRPC's MAX_CONNECTION_AGE or Envoy's max_connection_duration.
"""

from __future__ import annotations

import random
import time
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]

# Forget counts when this many connections are tracked (closed connections leave entries
# behind; a forgotten count only delays that connection's close).
MAX_TRACKED = 65_536


class RecycleConnections:
    """ASGI middleware: `Connection: close` on a connection's `max_requests`-th request, or on
    its first request after it is `max_age_s` old (each limit jittered per connection; a limit
    of 0 is never reached)."""

    def __init__(self, app: ASGIApp, max_requests: int = 100, max_age_s: float = 0.0,
                 seed: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.max_requests = max(0, int(max_requests))
        self.max_age_s = max(0.0, float(max_age_s))
        # connection -> [requests served, its request limit, its deadline]
        self.counts: dict[tuple, list] = {}
        self._rng = random.Random(seed)
        self._clock = clock

    def _limit(self) -> int:
        if not self.max_requests:
            return 2**62
        low = max(1, self.max_requests // 2)
        return self._rng.randint(low, max(low, self.max_requests + self.max_requests // 2))

    def _deadline(self, now: float) -> float:
        if not self.max_age_s:
            return float("inf")
        return now + self._rng.uniform(0.5 * self.max_age_s, 1.5 * self.max_age_s)

    async def __call__(self, scope: Scope, receive, send) -> None:
        client = scope.get("client")
        if scope.get("type") != "http" or not client:
            await self.app(scope, receive, send)
            return
        key = (tuple(client), tuple(scope.get("server") or ()))
        now = self._clock()
        entry = self.counts.get(key)
        if entry is None:
            if len(self.counts) >= MAX_TRACKED:
                self.counts.clear()
            entry = self.counts[key] = [0, self._limit(), self._deadline(now)]
        entry[0] += 1
        if entry[0] < entry[1] and now < entry[2]:
            await self.app(scope, receive, send)
            return
        self.counts.pop(key, None)

        async def send_with_close(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_with_close)
