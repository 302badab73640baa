"""Pure parts of the serving layer: label config parsing, result shapes, input checks, auth."""

import base64

import pytest

from labelloop.settings import load_settings
from services.ls_backend import (
    LabelConfigError,
    basic_auth_ok,
    build_results,
    parse_label_config,
    select_control,
    task_texts,
)
from services.runtime import BadRequest, clean_texts, parse_classify_body, secret_equals

LABELS = ["negative", "neutral", "positive"]
CONFIG = """<View>
  <Header value="How does this tweet feel?"/>
  <Text name="tweet" value="$content"/>
  <Choices name="sentiment" toName="tweet" choice="single-radio">
    <Choice value="negative"/><Choice value="neutral"/><Choice value="positive"/>
  </Choices>
</View>"""


def test_parse_label_config_finds_names_and_data_key():
    (c,) = parse_label_config(CONFIG)
    assert (c.from_name, c.to_name, c.data_key) == ("sentiment", "tweet", "content")
    assert c.labels == tuple(LABELS)
    assert select_control([c], LABELS) is c
    assert select_control([c], list(reversed(LABELS))) is c  # order does not matter


def test_select_control_picks_the_matching_choices_among_several():
    config = CONFIG.replace("</View>", """
      <Choices name="topic" toName="tweet"><Choice value="sports"/><Choice value="news"/></Choices>
    </View>""")
    controls = parse_label_config(config)
    assert [c.from_name for c in controls] == ["sentiment", "topic"]
    assert select_control(controls, LABELS).from_name == "sentiment"
    with pytest.raises(LabelConfigError, match="label mismatch"):
        select_control(controls, LABELS, from_name="topic")
    with pytest.raises(LabelConfigError, match="unknown from_name 'nope'"):
        select_control(controls, LABELS, from_name="nope")


@pytest.mark.parametrize("config, fragment", [
    ("", "empty"),
    ("<View><Text", "not valid XML"),
    ("<View><Text name='t' value='$x'/></View>", "no <Choices>"),
    ("<View><Choices name='c' toName='t'><Choice value='a'/></Choices></View>", "no <Text>"),
    ("<View><Text name='t' value='x'/><Choices name='c' toName='t'/></View>", "value="),
])
def test_bad_label_configs(config, fragment):
    with pytest.raises(LabelConfigError, match=fragment):
        parse_label_config(config)


def test_label_mismatch_names_the_difference():
    (c,) = parse_label_config(CONFIG.replace('"neutral"', '"meh"'))
    with pytest.raises(LabelConfigError) as err:
        select_control([c], LABELS)
    assert "['neutral']" in str(err.value) and "['meh']" in str(err.value)


def test_task_texts_and_results():
    tasks = [{"id": 1, "data": {"content": "a"}}, {"id": 2, "data": {"content": "b" * 50}}]
    assert task_texts(tasks, "content", max_chars=10) == ["a", "b" * 10]
    with pytest.raises(BadRequest, match="task 3 has no data key 'content'"):
        task_texts([{"id": 3, "data": {"text": "x"}}], "content", 10)
    with pytest.raises(BadRequest, match="has type int"):
        task_texts([{"id": 3, "data": {"content": 5}}], "content", 10)
    (c,) = parse_label_config(CONFIG)
    preds = [{"label": "neutral", "score": 0.5, "probabilities": {}}]
    (res,) = build_results(c, preds, "7")
    assert res["model_version"] == "7" and res["score"] == 0.5
    assert res["result"][0] == {"from_name": "sentiment", "to_name": "tweet", "type": "choices",
                                "value": {"choices": ["neutral"]}, "score": 0.5}


def test_classify_input_checks():
    s = load_settings(environ={}, overrides={"serving": {"max_texts_per_request": 3,
                                                           "max_text_chars": 5}})
    assert parse_classify_body({"text": "hello world"}, s) == (["hello"], True)  # truncated
    assert parse_classify_body({"texts": ["a", "b"]}, s) == (["a", "b"], False)
    for body, status in [({"texts": ["a"] * 4}, 413), ({"text": ""}, 422), ({}, 422),
                         ({"texts": [1]}, 422), ([1], 422), ({"text": "a", "x": 1}, 422)]:
        with pytest.raises(BadRequest) as err:
            parse_classify_body(body, s)
        assert err.value.status == status, body
    strict = s.model_copy(update={"serving": s.serving.model_copy(update={"oversize_text": "reject"})})
    with pytest.raises(BadRequest) as err:
        clean_texts(["toolongtext"], strict)
    assert err.value.status == 413


def test_secret_checks():
    assert secret_equals("abc", "abc") and not secret_equals("abd", "abc")
    assert not secret_equals("", "") and not secret_equals(None, "x")
    header = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert basic_auth_ok(header, "user", "pa:ss")
    assert not basic_auth_ok(header, "user", "other")
    assert not basic_auth_ok(header, "user", "")
    assert not basic_auth_ok("Basic !!!", "user", "pa:ss")
    assert not basic_auth_ok("Bearer x", "user", "pa:ss")


def _request(headers: dict):
    from starlette.requests import Request

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_auth_checks_and_unconfigured_secrets():
    from services.ls_backend import AuthError, check_basic, check_webhook

    good = {"Authorization": "Basic " + base64.b64encode(b"u:pw").decode()}
    check_basic(_request(good), "u", "pw")
    for headers, password, status, fragment in [
        ({}, "pw", 401, "Basic auth required"),
        ({"Authorization": "Basic " + base64.b64encode(b"u:no").decode()}, "pw", 401, "invalid"),
        (good, "", 403, "LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD"),
    ]:
        with pytest.raises(AuthError) as err:
            check_basic(_request(headers), "u", password)
        assert err.value.status == status and fragment in err.value.message
    # webhook: secret header OR basic auth
    check_webhook(_request({"X-Labelloop-Secret": "s"}), "s", "u", "pw")
    check_webhook(_request(good), "s", "u", "pw")
    check_webhook(_request(good), "", "u", "pw")
    for headers, secret, password, status in [
        ({}, "s", "pw", 401),
        ({"X-Labelloop-Secret": "wrong"}, "s", "pw", 403),
        ({"X-Labelloop-Secret": "s"}, "", "pw", 403),   # secret not configured
        ({}, "", "", 403),                               # nothing configured
    ]:
        with pytest.raises(AuthError) as err:
            check_webhook(_request(headers), secret, "u", password)
        assert err.value.status == status, headers
