"""RecycleConnections: every connection is told to close after its share of requests."""

from __future__ import annotations

import asyncio

from services.balance import RecycleConnections


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _call(mw, client=("127.0.0.1", 50000), kind="http") -> list[tuple[bytes, bytes]]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    asyncio.run(mw({"type": kind, "client": client, "server": ("127.0.0.1", 3000)}, receive, send))
    return sent[0]["headers"] if sent else []


def _closes(headers) -> bool:
    return (b"connection", b"close") in headers


def test_closes_each_connection_within_its_jittered_limit_and_keeps_other_headers():
    mw = RecycleConnections(_app, max_requests=10, seed=1)
    for port in range(50000, 50020):
        client = ("127.0.0.1", port)
        for served in range(1, 16):
            headers = _call(mw, client)
            assert (b"content-type", b"application/json") in headers
            if _closes(headers):
                assert (b"connection", b"keep-alive") not in headers  # replaced, not doubled
                break
        assert 5 <= served <= 15
        assert client[1] not in {k[0][1] for k in mw.counts}  # forgotten once closed


def test_limits_differ_between_connections_and_other_connections_are_untouched():
    mw = RecycleConnections(_app, max_requests=100, seed=2)
    firsts = set()
    for port in range(40000, 40010):
        n = 0
        while not _closes(_call(mw, ("10.0.0.1", port))):
            n += 1
        firsts.add(n)
    assert len(firsts) > 1  # jittered: a pool opened together does not reconnect together
    assert not _closes(_call(mw, ("10.0.0.2", 1)))


def test_non_http_scopes_pass_through():
    mw = RecycleConnections(_app, max_requests=1)
    assert not _closes(_call(mw, kind="lifespan"))
    assert not mw.counts


def test_closes_a_connection_once_it_is_older_than_its_jittered_age():
    now = [100.0]
    mw = RecycleConnections(_app, max_requests=0, max_age_s=2.0, seed=3, clock=lambda: now[0])
    ages = []
    for port in range(30000, 30010):
        client = ("127.0.0.1", port)
        born = now[0]
        assert not _closes(_call(mw, client))  # first request never closes
        while not _closes(_call(mw, client)):
            now[0] += 0.1
            assert now[0] - born < 3.0 + 1e-9, "age limit not honoured"
        ages.append(now[0] - born)
        assert ages[-1] >= 1.0 - 1e-9  # not before half the configured age
    assert len({round(a, 1) for a in ages}) > 1  # jittered per connection


def test_count_and_age_limits_both_apply_and_zero_disables_a_limit():
    now = [0.0]
    mw = RecycleConnections(_app, max_requests=10, max_age_s=0.0, seed=4, clock=lambda: now[0])
    now[0] = 10_000.0  # very old, but the age limit is off: only the count closes it
    served = 1
    while not _closes(_call(mw, ("127.0.0.1", 1))):
        served += 1
    assert 5 <= served <= 15
    mw = RecycleConnections(_app, max_requests=1000, max_age_s=1.0, seed=5, clock=lambda: now[0])
    assert not _closes(_call(mw, ("127.0.0.1", 2)))
    now[0] += 1.6  # past 1.5x the age: closes long before the count
    assert _closes(_call(mw, ("127.0.0.1", 2)))
