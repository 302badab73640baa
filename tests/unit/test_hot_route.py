"""HotRoute: answers its path and method from the parsed JSON body, passes everything else on."""

from __future__ import annotations

import asyncio
import json

from starlette.responses import JSONResponse

from services.hot_route import HotRoute


async def _next_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"next"})


async def _echo(body):
    return JSONResponse({"got": body})


def _call(mw, path="/classify", method="POST", chunks=(b'{"text": "hi"}',), kind="http",
          headers=()):
    sent = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": kind, "path": path, "method": method, "headers": list(headers)}
    asyncio.run(mw(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body, dict(sent[0]["headers"])


def test_answers_its_route_with_the_parsed_body_even_in_chunks():
    mw = HotRoute(_next_app, path="/classify", get_handler=lambda: _echo)
    status, body, _ = _call(mw, chunks=(b'{"text": ', b'"hi"}'))
    assert status == 200 and json.loads(body) == {"got": {"text": "hi"}}
    status, body, _ = _call(mw, chunks=(b"",))
    assert status == 200 and json.loads(body) == {"got": None}  # the handler names the problem


def test_other_paths_and_scopes_pass_through():
    mw = HotRoute(_next_app, path="/classify", get_handler=lambda: _echo)
    assert _call(mw, path="/metadata")[:2] == (299, b"next")
    assert _call(mw, path="/classify_batch")[:2] == (299, b"next")


def test_errors_wrong_method_malformed_json_and_not_loaded():
    mw = HotRoute(_next_app, path="/classify", get_handler=lambda: _echo)
    status, body, headers = _call(mw, method="GET")
    assert status == 405 and b"POST only" in body and headers[b"allow"] == b"POST"
    status, body, _ = _call(mw, chunks=(b'{"text": ',))
    assert status == 400 and b"malformed JSON" in body

    def loading():
        raise LookupError("the model is still loading")

    status, body, _ = _call(HotRoute(_next_app, path="/classify", get_handler=loading))
    assert status == 503 and b"still loading" in body


def test_bodies_over_the_limit_get_413_with_or_without_a_length():
    mw = HotRoute(_next_app, path="/classify", get_handler=lambda: _echo, max_body_bytes=10)
    status, body, _ = _call(mw, chunks=(b'{"text": "0123456789"}',),
                            headers=[(b"content-length", b"22")])
    assert status == 413 and b"max_request_mb" in body
    status, _, _ = _call(mw, chunks=(b'{"text": ', b'"0123456789"}'))  # chunked, no length
    assert status == 413
    assert _call(mw, chunks=(b'"small"',))[0] == 200
