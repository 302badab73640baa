"""HTTP for a generation champion: `POST /generate` and an OpenAI-compatible subset.

Routes (pure ASGI endpoints in front of the router, like /classify; services/hot_route.py):
  POST /generate              {"prompt"|"messages"|"prompts", "max_new_tokens", "temperature",
                              "top_p", "stop", "stream", "raw", "ignore_eos"}
  POST /v1/chat/completions   OpenAI chat completions (streaming and not)
  POST /v1/completions        OpenAI text completions (prompt verbatim, no chat template)
  GET  /v1/models             the served model

Model code lives in labelloop/generation_engine.py; this module validates requests, hands them
to the current version's engine and turns its tokens into JSON or server-sent events. A request
is encoded and submitted to one engine, so every answer comes from one version; a request that
reaches an engine retired by a hot reload is encoded again for the new version.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from labelloop.generation_engine import (EngineClosed, EngineDied, EngineUnavailable,
                                         GenRequest, Overloaded, Sampling, TextStream)
from labelloop.settings import Settings
from services.runtime import BadRequest, check_unicode

MAX_TEMPERATURE = 2.0
MAX_STOPS, MAX_STOP_CHARS = 4, 64
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RETRY = {"Retry-After": "1"}

GENERATE_FIELDS = {"prompt", "messages", "prompts", "max_new_tokens", "temperature", "top_p",
                   "stop", "stream", "raw", "ignore_eos"}
# OpenAI fields accepted and honoured, accepted only at their neutral value, and refused.
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "stop", "stream", "stream_options", "user", "n", "presence_penalty",
               "frequency_penalty", "logprobs", "ignore_eos"}
COMPLETION_FIELDS = (CHAT_FIELDS - {"messages", "max_completion_tokens"}) | {"prompt", "echo"}
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": None, "echo": False}


@dataclass
class Job:
    """A validated request: prompts (text or chat turns) and how to sample them."""
    prompts: list[Any]  # str, or a list of chat messages
    sampling: Sampling
    stream: bool = False
    raw: bool = False   # prompts verbatim (no chat template)
    single: bool = True
    include_usage: bool = False  # OpenAI stream_options: a last chunk with the token counts
    # Too long a prompt is fitted as in training (oldest turns first, then the start of the last
    # message) instead of refused: the annotation path, where one long task must not cost the
    # whole batch its responses. The APIs refuse it (413), as API users expect.
    fit: bool = False


# ---- validation ------------------------------------------------------------------------------

def _unknown(body: dict, allowed: set[str]) -> None:
    unknown = sorted(str(k)[:50] for k in set(body) - allowed)[:10]
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; known: {sorted(allowed)}")


def _number(body: dict, name: str, default: float, lo: float, hi: float,
            lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise BadRequest(f"'{name}' must be a number, got {json.dumps(value)[:50]}")
    if value > hi or value < lo or (lo_open and value == lo):
        raise BadRequest(f"'{name}' is {value}; it must be {'>' if lo_open else '>='} {lo} and "
                         f"<= {hi}")
    return float(value)


def _int(body: dict, names: tuple[str, ...], default: int, hi: int) -> int:
    given = [n for n in names if body.get(n) is not None]
    if not given:
        return default
    name = given[0]
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {json.dumps(value)[:50]}")
    if not 1 <= value <= hi:
        raise BadRequest(f"'{name}' is {value}; it must be between 1 and {hi} "
                         "(serving.generation.max_new_tokens)")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false, got {json.dumps(value)[:50]}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, got type {type(value).__name__}")
    if not value.strip():
        raise BadRequest(f"{what} is empty or only whitespace")
    check_unicode(value, what)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
            or len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} "
                         f"such strings of at most {MAX_STOP_CHARS} characters")
    return tuple(stops)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or set(m) - {"role", "content", "name"}:
            raise BadRequest(f"messages[{i}] must be {{\"role\": \"system\"|\"user\"|\"assistant\","
                             f" \"content\": \"...\"}}")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text ones only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        out.append({"role": m["role"], "content": _text(content, f"messages[{i}].content")})
    return out


def _sampling(body: dict, settings: Settings, temperature: float,
              max_names: tuple[str, ...]) -> Sampling:
    gen = settings.serving.generation
    return Sampling(
        max_new_tokens=_int(body, max_names, gen.default_max_new_tokens, gen.max_new_tokens),
        temperature=_number(body, "temperature", temperature, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=_stop(body), ignore_eos=_flag(body, "ignore_eos"))


def _prompt_list(value: Any, settings: Settings) -> list[str]:
    cap = settings.serving.generation.max_prompts_per_request
    if not isinstance(value, list) or not value:
        raise BadRequest("'prompts' must be a non-empty list of strings")
    if len(value) > cap:
        raise BadRequest(f"{len(value)} prompts in one request; the maximum is {cap} "
                         "(serving.generation.max_prompts_per_request)", status=413)
    return [_text(p, f"prompts[{i}]") for i, p in enumerate(value)]


def parse_generate(body: Any, settings: Settings) -> Job:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object such as {"prompt": "..."}')
    _unknown(body, GENERATE_FIELDS)
    given = [k for k in ("prompt", "messages", "prompts") if body.get(k) is not None]
    if len(given) != 1:
        raise BadRequest('send exactly one of "prompt" (a string), "messages" (chat turns) or '
                         '"prompts" (a list of strings)')
    sampling = _sampling(body, settings, 0.0, ("max_new_tokens",))
    stream, raw = _flag(body, "stream"), _flag(body, "raw")
    if given[0] == "prompts":
        if stream:
            raise BadRequest("'stream' works with one prompt; send 'prompt' or 'messages'")
        return Job(_prompt_list(body["prompts"], settings), sampling, False, raw, single=False)
    if given[0] == "messages":
        return Job([_messages(body["messages"])], sampling, stream, raw)
    return Job([_text(body["prompt"], "prompt")], sampling, stream, raw)


def _openai_common(body: Any, allowed: set[str]) -> None:
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    _unknown(body, allowed)
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in (neutral, None) and not (
                name == "logprobs" and body[name] is False):
            raise BadRequest(f"'{name}' = {json.dumps(body[name])[:40]} is not supported by "
                             f"this server (only {json.dumps(neutral)})")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage"}):
        raise BadRequest("'stream_options' may hold only 'include_usage'")


def parse_chat(body: Any, settings: Settings) -> Job:
    _openai_common(body, CHAT_FIELDS)
    messages = _messages(body.get("messages"))
    sampling = _sampling(body, settings, 1.0, ("max_completion_tokens", "max_tokens"))
    return Job([messages], sampling, _flag(body, "stream"), include_usage=_include_usage(body))


def parse_completion(body: Any, settings: Settings) -> Job:
    _openai_common(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    prompts = _prompt_list(prompt, settings) if isinstance(prompt, list) else \
        [_text(prompt, "'prompt'")]
    stream = _flag(body, "stream")
    if stream and len(prompts) > 1:
        raise BadRequest("'stream' works with one prompt")
    return Job(prompts, _sampling(body, settings, 1.0, ("max_tokens",)), stream, raw=True,
               single=not isinstance(prompt, list), include_usage=_include_usage(body))


def _include_usage(body: dict) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


# ---- running a job ---------------------------------------------------------------------------

class Rejected(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.code = status, message, headers, code


def _encode(gen, job: Job) -> list[list[int]]:
    limit = gen.max_prompt_tokens
    out = []
    for i, p in enumerate(job.prompts):
        fit = limit if job.fit else None  # a raw prompt is never fitted: the check below
        ids = gen.encode(messages=p, max_tokens=fit) if isinstance(p, list) else \
            gen.encode(p, raw=job.raw, max_tokens=fit)
        if len(ids) > limit:
            what = "the prompt" if len(job.prompts) == 1 else f"prompts[{i}]"
            raise Rejected(413, f"{what} has {len(ids)} tokens; the maximum is {limit} "
                                "(serving.generation.max_prompt_tokens)",
                           code="context_length_exceeded")
        if not ids:
            raise Rejected(422, "the prompt encodes to no tokens")
        out.append(ids)
    return out


async def submit(get_model: Callable[[], Any], job: Job) -> tuple[Any, list[GenRequest]]:
    """Encode the job for the current version and hand it to that version's engine."""
    for _ in range(3):
        model = get_model()
        gen = model.generator
        if gen is None:
            raise Rejected(409, f"the served model (version {model.version}) is a "
                                f"{model.task_type} model: use POST /classify")
        if job.sampling.max_new_tokens > gen.max_new_tokens:
            # the model's positions allow fewer than the settings (Generator shrank the limits)
            raise Rejected(422, f"'max_new_tokens' is {job.sampling.max_new_tokens}; this model "
                                f"(version {model.version}) generates at most "
                                f"{gen.max_new_tokens} (its positions and "
                                "serving.generation.max_new_tokens)")
        if len(job.prompts) > 16:  # bulk: tokenize off the event loop
            ids = await run_in_threadpool(_encode, gen, job)
        else:
            ids = _encode(gen, job)
        reqs = [GenRequest(p, job.sampling, stream=job.stream) for p in ids]
        try:
            gen.engine.submit(reqs)
        except EngineClosed:
            continue  # a hot reload retired that version just now: encode for the new one
        except Overloaded as exc:
            raise Rejected(503, f"overloaded: {exc}; retry", RETRY) from None
        except EngineUnavailable as exc:  # its process died; a new one is loading
            raise Rejected(503, f"{exc}; retry", RETRY) from None
        return model, reqs
    raise Rejected(503, "the model is being reloaded; retry", RETRY)


async def wait_all(reqs: list[GenRequest]) -> None:
    try:
        for r in reqs:
            while not r.done:
                await r.changed()
    finally:
        for r in reqs:  # the client went away (task cancelled): free their slots
            if not r.done:
                r.cancel()
    failed = next((r for r in reqs if r.finish_reason == "error"), None)
    if failed is not None and isinstance(failed.error, EngineDied):  # not the request's fault
        raise Rejected(503, f"generation failed: {failed.error}; the service is starting a new "
                            "engine process, retry", RETRY)
    if failed is not None:
        raise Rejected(500, f"generation failed ({type(failed.error).__name__}); the service "
                            "keeps serving")


async def deltas(gen, req: GenRequest) -> AsyncIterator[str]:
    """Text deltas of one streaming request as tokens arrive; cancels it if the client leaves."""
    text = TextStream(gen.tokenizer, req)
    try:
        while True:
            if not req.done:
                await req.changed()
            piece = text.delta()
            if piece:
                yield piece
            if text.finished:  # not req.done: it may have finished after that delta was cut
                if req.finish_reason == "error":
                    raise RuntimeError(f"generation failed: {req.error}"
                                       if isinstance(req.error, EngineDied) else
                                       "generation failed")
                return
    finally:
        if not req.done:
            req.cancel()


def result_of(gen, req: GenRequest) -> dict[str, Any]:
    return {"text": TextStream(gen.tokenizer, req).text(), "finish_reason": req.finish_reason,
            "prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.tokens)}


def sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _finish_reason(reason: Optional[str]) -> str:
    return "length" if reason == "length" else "stop"


# ---- the routes ------------------------------------------------------------------------------

class GenerationAPI:
    """The generation routes of one service instance (`svc`: services.service.Labelloop)."""

    def __init__(self, svc):
        self.svc = svc
        self.settings: Settings = svc.settings
        self.in_flight = 0

    def _model(self):
        return self.svc.holder.current

    def _log(self, job: Job, model, reqs: list[GenRequest], texts: list[str], source: str):
        prompts = [p if isinstance(p, str) else json.dumps(p) for p in job.prompts]
        details = [{"finish_reason": r.finish_reason, "prompt_tokens": len(r.prompt_ids),
                    "completion_tokens": len(r.tokens), "temperature": job.sampling.temperature,
                    "top_p": job.sampling.top_p, "max_new_tokens": job.sampling.max_new_tokens}
                   for r in reqs]
        self.svc.plog.record_generation(prompts, texts, model.version, source, details)

    async def _guarded(self, body, parse, answer, openai: bool) -> Response:
        cap = self.settings.serving.generation.max_concurrent_requests
        if self.in_flight >= cap:
            return _error(429, f"{self.in_flight} generation requests in flight; the maximum is "
                               f"{cap} (serving.generation.max_concurrent_requests); retry",
                          openai, RETRY)
        self.in_flight += 1
        streaming = False
        try:
            try:
                job = parse(body, self.settings)
                model, reqs = await submit(self._model, job)
            except BadRequest as exc:
                status = exc.status if not openai else (413 if exc.status == 413 else 400)
                return _error(status, exc.message, openai)
            except Rejected as exc:
                status = 400 if openai and exc.status in (413, 422) else exc.status
                return _error(status, exc.message, openai, exc.headers, exc.code)
            response = await answer(job, model, reqs)
            if isinstance(response, StreamingResponse):
                streaming = True
                response.body_iterator = self._release_after(response.body_iterator)
            return response
        except Rejected as exc:
            return _error(exc.status, exc.message, openai, exc.headers)
        finally:
            if not streaming:
                self.in_flight -= 1

    async def _release_after(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            self.in_flight -= 1

    # POST /generate
    async def generate(self, body: Any) -> Response:
        return await self._guarded(body, parse_generate, self._generate, openai=False)

    async def _generate(self, job: Job, model, reqs: list[GenRequest]) -> Response:
        gen, t0 = model.generator, time.perf_counter()
        if job.stream:
            return StreamingResponse(self._generate_events(job, model, reqs[0]),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        await wait_all(reqs)
        results = [result_of(gen, r) for r in reqs]
        self._log(job, model, reqs, [r["text"] for r in results], "generate")
        answer: dict[str, Any] = {"model_version": model.version}
        if job.single:
            answer.update(results[0])
        else:
            answer.update(results=results,
                          prompt_tokens=sum(r["prompt_tokens"] for r in results),
                          completion_tokens=sum(r["completion_tokens"] for r in results))
        answer["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return JSONResponse(answer)

    async def _generate_events(self, job: Job, model, req: GenRequest):
        gen = model.generator
        try:
            async for piece in deltas(gen, req):
                yield sse({"text": piece})
        except RuntimeError as exc:
            yield sse({"error": f"{exc}; the service keeps serving"})
            return
        result = result_of(gen, req)
        self._log(job, model, [req], [result["text"]], "generate")
        yield sse({"done": True, "model_version": model.version, **result})

    # POST /v1/chat/completions and /v1/completions
    async def chat_completions(self, body: Any) -> Response:
        return await self._guarded(body, parse_chat, self._openai("chat"), openai=True)

    async def completions(self, body: Any) -> Response:
        return await self._guarded(body, parse_completion, self._openai("text"), openai=True)

    def _openai(self, kind: str):
        async def answer(job: Job, model, reqs: list[GenRequest]) -> Response:
            meta = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                    "created": int(time.time()), "model": self.settings.registry.model_name,
                    "system_fingerprint": f"labelloop-v{model.version}"}
            if job.stream:
                return StreamingResponse(self._openai_events(kind, job, model, reqs[0], meta),
                                         media_type="text/event-stream", headers=SSE_HEADERS)
            await wait_all(reqs)
            gen = model.generator
            texts = [result_of(gen, r)["text"] for r in reqs]
            self._log(job, model, reqs, texts, f"openai-{kind}")
            choices = []
            for i, (r, text) in enumerate(zip(reqs, texts)):
                c: dict[str, Any] = {"index": i, "finish_reason": _finish_reason(r.finish_reason),
                                     "logprobs": None}
                if kind == "chat":
                    c["message"] = {"role": "assistant", "content": text}
                else:
                    c["text"] = text
                choices.append(c)
            usage = _usage(reqs)
            return JSONResponse({**meta, "object": "chat.completion" if kind == "chat"
                                 else "text_completion", "choices": choices, "usage": usage,
                                 "model_version": model.version})
        return answer

    async def _openai_events(self, kind: str, job: Job, model, req: GenRequest, meta: dict):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(content: Optional[str], finish: Optional[str] = None, role: bool = False):
            c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if kind == "chat":
                c["delta"] = ({"role": "assistant"} if role else {}) | (
                    {"content": content} if content is not None else {})
            else:
                c["text"] = content or ""
            return sse({**meta, "object": obj, "choices": [c]})

        gen = model.generator
        if kind == "chat":
            yield chunk("", role=True)
        try:
            async for piece in deltas(gen, req):
                yield chunk(piece)
        except RuntimeError as exc:
            yield sse({"error": {"message": str(exc), "type": "server_error"}})
            return
        yield chunk(None, _finish_reason(req.finish_reason))
        text = result_of(gen, req)["text"]
        self._log(job, model, [req], [text], f"openai-{kind}")
        if job.include_usage:
            yield sse({**meta, "object": obj, "choices": [], "usage": _usage([req])})
        yield sse("[DONE]")

    # GET /v1/models
    async def models(self, _body: Any = None) -> Response:
        model = self._model()
        return JSONResponse({"object": "list", "data": [{
            "id": self.settings.registry.model_name, "object": "model",
            "created": int(model.loaded_at), "owned_by": "labelloop",
            "model_version": model.version, "task": model.task_type}]})


def _usage(reqs: list[GenRequest]) -> dict[str, int]:
    p, c = sum(len(r.prompt_ids) for r in reqs), sum(len(r.tokens) for r in reqs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _error(status: int, message: str, openai: bool, headers: Optional[dict] = None,
           code: Optional[str] = None) -> JSONResponse:
    if openai:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body: Any = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)
