"""Request validation of /generate and the OpenAI-compatible routes (services/generation_api.py)."""

from __future__ import annotations

import pytest

from labelloop.settings import Settings
from services.generation_api import parse_chat, parse_completion, parse_generate
from services.runtime import BadRequest

S = Settings(serving={"generation": {"max_new_tokens": 100, "default_max_new_tokens": 7,
                                     "max_prompts_per_request": 3}})
USER = [{"role": "user", "content": "hi"}]


def test_generate_defaults_and_fields():
    job = parse_generate({"prompt": "hi"}, S)
    assert job.prompts == ["hi"] and job.single and not job.stream and not job.raw
    assert job.sampling.max_new_tokens == 7 and job.sampling.temperature == 0.0
    assert job.sampling.top_p == 1.0 and job.sampling.stop == ()
    job = parse_generate({"messages": USER, "max_new_tokens": 100, "temperature": 2,
                          "top_p": 0.5, "stop": "\n", "stream": True, "ignore_eos": True}, S)
    assert job.prompts == [USER] and job.stream and job.sampling.stop == ("\n",)
    assert job.sampling.max_new_tokens == 100 and job.sampling.ignore_eos
    job = parse_generate({"prompts": ["a", "b"], "raw": True}, S)
    assert job.prompts == ["a", "b"] and not job.single and job.raw
    # OpenAI content parts of type text are joined
    job = parse_generate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, S)
    assert job.prompts == [[{"role": "user", "content": "ab"}]]


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": ""}, 422, "empty"),
    ({"prompt": " \n"}, 422, "empty"),
    ({"prompt": 3}, 422, "string"),
    ({}, 422, "exactly one"),
    ({"prompt": "a", "prompts": ["b"]}, 422, "exactly one"),
    ({"prompt": "a", "max_new_tokens": 0}, 422, "between 1 and 100"),
    ({"prompt": "a", "max_new_tokens": 101}, 422, "between 1 and 100"),
    ({"prompt": "a", "max_new_tokens": 1.5}, 422, "integer"),
    ({"prompt": "a", "max_new_tokens": True}, 422, "integer"),
    ({"prompt": "a", "temperature": -1}, 422, "temperature"),
    ({"prompt": "a", "temperature": 2.01}, 422, "temperature"),
    ({"prompt": "a", "temperature": "warm"}, 422, "number"),
    ({"prompt": "a", "top_p": 0}, 422, "top_p"),
    ({"prompt": "a", "top_p": 1.1}, 422, "top_p"),
    ({"prompt": "a", "stop": ""}, 422, "stop"),
    ({"prompt": "a", "stop": ["x"] * 5}, 422, "stop"),
    ({"prompt": "a", "stop": ["x" * 65]}, 422, "stop"),
    ({"prompt": "a", "stream": "yes"}, 422, "true or false"),
    ({"prompt": "a", "seed": 1}, 422, "unknown field"),
    ({"prompts": []}, 422, "non-empty"),
    ({"prompts": ["a", ""]}, 422, "prompts[1]"),
    ({"prompts": ["a"] * 4}, 413, "max_prompts_per_request"),
    ({"prompts": ["a"], "stream": True}, 422, "stream"),
    ({"messages": []}, 422, "non-empty"),
    ({"messages": [{"role": "user"}]}, 422, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, 422, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 422, "text parts"),
    ({"prompt": "\ud800"}, 422, "surrogate"),
    ("a string", 422, "JSON object"),
])
def test_generate_refuses(body, status, words):
    with pytest.raises(BadRequest) as err:
        parse_generate(body, S)
    assert err.value.status == status and words in err.value.message


def test_openai_chat_and_completions():
    job = parse_chat({"model": "m", "messages": USER, "max_tokens": 5, "n": 1,
                      "stream": True, "stream_options": {"include_usage": True}, "user": "u",
                      "presence_penalty": 0, "logprobs": False}, S)
    assert job.sampling.max_new_tokens == 5 and job.stream and job.include_usage
    assert job.sampling.temperature == 1.0  # OpenAI's default
    assert parse_chat({"model": "m", "messages": USER, "max_completion_tokens": 9},
                      S).sampling.max_new_tokens == 9
    job = parse_completion({"model": "m", "prompt": ["a", "b"], "max_tokens": 2}, S)
    assert job.prompts == ["a", "b"] and job.raw and not job.single


@pytest.mark.parametrize("parse, body, words", [
    (parse_chat, {"model": "m", "messages": USER, "n": 2}, "not supported"),
    (parse_chat, {"model": "m", "messages": USER, "frequency_penalty": 0.5}, "not supported"),
    (parse_chat, {"model": "m", "messages": USER, "logprobs": True}, "not supported"),
    (parse_chat, {"model": "m", "messages": USER, "tools": []}, "unknown field"),
    (parse_chat, {"model": "m", "messages": USER, "stream_options": {"x": 1}}, "include_usage"),
    (parse_chat, {"model": "m", "messages": USER, "max_tokens": 1000}, "between 1 and 100"),
    (parse_chat, {"model": "m"}, "messages"),
    (parse_completion, {"model": "m", "prompt": "a", "echo": True}, "not supported"),
    (parse_completion, {"model": "m", "prompt": ["a", "b"], "stream": True}, "stream"),
    (parse_completion, {"model": "m", "prompt": ""}, "empty"),
])
def test_openai_refuses(parse, body, words):
    with pytest.raises(BadRequest) as err:
        parse(body, S)
    assert words in err.value.message
