"""Issue 11 (hardening), the parts that need no server: work per request bounded by what the
model reads, every malformed body a 4xx with a message, guards (Host, JSON only, auth
throttle), bounded error logs. The real-server checks are tests/integration/test_service_hostile.py."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from labelloop import modeling
from labelloop.settings import Settings
from services import guard
from services.runtime import BadRequest, check_batch_body, clean_texts, parse_classify_body


@pytest.fixture(scope="module")
def fast_tokenizer():
    base = modeling.resolve_base_model(Settings().model.base)
    return modeling._fast_tokenizer(modeling.load_tokenizer(base), 64)


class _Recorder:
    """Stands in for the Rust tokenizer: remembers how many characters it was given."""

    def __init__(self):
        self.seen: list[int] = []

    def encode(self, text):
        self.seen.append(len(text))
        return type("E", (), {"ids": [1, 2]})()

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]


def _classifier(max_length=64):
    clf = object.__new__(modeling.Classifier)
    clf.max_length, clf.max_chars = max_length, modeling.max_chars_for(max_length)
    clf._fast = _Recorder()
    return clf


# ---- bounded work ------------------------------------------------------------------------------

def test_texts_are_cut_to_the_model_window_before_tokenizing():
    """500 texts of 100,000 characters were tokenized in full (minutes, 7.5 GB) although the
    model reads 64 tokens: the tokenizer now sees at most max_length x CHARS_PER_TOKEN each."""
    clf = _classifier(64)
    clf.encode(["x" * 100_000] * 3)  # the one-by-one path
    clf.encode(["y" * 100_000] * 40)  # the batch path
    assert max(clf._fast.seen) == 64 * modeling.CHARS_PER_TOKEN == clf.max_chars


def test_cutting_does_not_change_what_the_model_reads(fast_tokenizer):
    """The cut keeps the first max_length tokens of real text (here tweets, long words, URLs and
    runs of spaces): the ids equal those of the full text."""
    sentence = ("I can't believe the service at https://example.com/some/long/path?x=1 was "
                "sooooooooooooooooooooooo slow today,      again!!! ")
    text = sentence * 2000
    cut = text[:modeling.max_chars_for(64)]
    assert fast_tokenizer.encode(cut).ids == fast_tokenizer.encode(text).ids


def test_request_token_cost_is_bounded_before_tokenizing():
    s = Settings(serving={"max_request_tokens": 1000, "max_texts_per_request": 4096})
    clean_texts(["short"] * 140, s, max_chars=2048, max_length=64)  # 140 x 7 tokens at most
    with pytest.raises(BadRequest) as err:  # 20 long texts x 64 tokens
        clean_texts(["long text " * 50] * 20, s, max_chars=2048, max_length=64)
    assert err.value.status == 413 and "max_request_tokens" in err.value.message
    texts = clean_texts(["z" * 100_000], s, max_chars=2048, max_length=64)
    assert len(texts[0]) == 2048  # cut to the window, not to max_text_chars (100,000)


def test_lone_surrogate_is_422_naming_its_place():
    body = json.loads('{"texts": ["fine", "bad \\ud800 here"]}')
    with pytest.raises(BadRequest) as err:
        parse_classify_body(body, Settings())
    assert err.value.status == 422 and "texts[1]" in err.value.message
    assert "surrogate at character 4" in err.value.message
    # a proper surrogate pair is one code point: fine
    assert parse_classify_body(json.loads('{"text": "\\ud83d\\ude00 ok"}'), Settings())


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"text": ' + b"[" * 5000,
                                 b"\xff\xfe", b"", b"{'a': 1}"])
def test_parse_json_turns_every_failure_into_400(raw):
    with pytest.raises(BadRequest) as err:
        guard.parse_json(raw)
    assert err.value.status == 400


@pytest.mark.parametrize("body, fragment", [
    ({"requests": 5}, "non-empty list"),
    ({"requests": []}, "non-empty list"),
    ({"requests": [["a"]], "x": 1}, "expected"),
    ({"requests": [["a"], "b"]}, "requests[1] must be a list"),
    ({"requests": [["a", 3]]}, "requests[0][1] has type int"),
    ({"requests": [["\ud800"]]}, "surrogate"),
    ({"requests": [["a"]] * 300}, "max_batch_size"),
    ({"requests": [["word " * 400] * 64] * 100}, "max_request_tokens"),
])
def test_classify_batch_bodies_are_checked_like_classify(body, fragment):
    with pytest.raises(BadRequest) as err:
        check_batch_body(body, Settings(), max_chars=2048, max_length=64)
    assert fragment in err.value.message


# ---- guards ------------------------------------------------------------------------------------

def test_host_policy():
    assert guard.host_policy("127.0.0.1", None) == guard.LOOPBACK_NAMES
    assert guard.host_policy("0.0.0.0", None) is None  # a container: any Host
    assert guard.host_policy("0.0.0.0", ["*"]) is None
    assert guard.host_policy("127.0.0.1", ["Labelloop.Example."]) == (
        guard.LOOPBACK_NAMES | {"labelloop.example"})
    assert [guard.host_name(h) for h in ("LOCALHOST:3000", "[::1]:3000", "a.b.", "127.0.0.1")] == [
        "localhost", "::1", "a.b", "127.0.0.1"]


async def _echo(scope, receive, send):
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(app, method="POST", path="/classify", **kw):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1:3000") as client:
            return await client.request(method, path, **kw)
    return asyncio.run(go())


def test_guard_host_content_type_and_body_checks():
    def check(path, raw):
        if guard.parse_json(raw) != {"ok": 1}:
            raise BadRequest("not ok")

    app = guard.Guard(_echo, hosts=guard.LOOPBACK_NAMES, json_routes=("/classify", "/b"),
                      read_routes=("/b",), max_body_bytes=100, check_body=check)
    assert _call(app, json={"a": 1}).status_code == 200
    rebound = _call(app, json={"a": 1}, headers={"Host": "evil.example:3000"})
    assert rebound.status_code == 400 and "evil.example" in rebound.json()["error"]
    assert _call(app, "GET", "/readyz", headers={"Host": "10.0.0.7"}).status_code == 200
    # a browser's cross-site "simple" request: text/plain, no preflight
    plain = _call(app, content=b'{"text": "x"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]
    assert _call(app, content=b"x", headers={"Content-Type": "multipart/form-data"}).status_code == 415
    assert _call(app, "POST", "/b", json={"ok": 1}).content == b'{"ok":1}'  # replayed body
    assert _call(app, "POST", "/b", json={"ok": 2}).status_code == 422
    assert _call(app, "POST", "/b", json={"x": "y" * 200}).status_code == 413
    assert _call(app, "POST", "/b", content=b"[[[", headers={"Content-Type": "application/json"}
                 ).status_code == 400


def test_auth_throttle_per_address_and_minute():
    now = [0.0]
    throttle = guard.AuthThrottle(3, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == pytest.approx(60)
    assert throttle.retry_after("5.6.7.8") == 0  # another address is not affected
    now[0] = 61
    assert throttle.retry_after("1.2.3.4") == 0
    assert guard.AuthThrottle(0).retry_after("x") == 0  # 0 = no limit


def test_error_log_is_bounded_and_client_errors_lose_their_traceback():
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        x: int

    now = [0.0]
    records = []
    logger = logging.getLogger("test.bounded")
    logger.propagate = False
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(guard.BoundedErrorLog(per_minute=5, clock=lambda: now[0]))
    for _ in range(1000):
        try:
            M(x="no")
        except ValidationError:
            logger.exception("Exception on %s [%s]", "/classify_batch", "POST")
    assert len(records) == 5
    assert records[0].exc_info is None and "ValidationError" in records[0].getMessage()
    now[0] = 61
    logger.error("later")
    assert "995 similar records left out" in records[-1].getMessage()
