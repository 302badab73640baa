"""Label Studio ML backend, spoken directly (no `label-studio-ml` package), as LS 1.23 calls it.

Mounted by services/service.py under `/ls`, so Label Studio's "Model URL" is
`http://<host>:<port>/ls`. Endpoints (paths relative to the mount):

| call           | auth                                        | what it does                              |
| -------------- | ------------------------------------------- | ----------------------------------------- |
| GET  /health   | HTTP Basic                                  | `{"status": "UP", "model_version": ...}`  |
| POST /setup    | HTTP Basic                                  | checks the label config, answers version  |
| POST /predict  | HTTP Basic                                  | one result per task, in task order        |
| POST /webhook  | `X-Labelloop-Secret` header OR HTTP Basic   | hands the event to annotation.webhook     |
| GET  /versions | HTTP Basic                                  | registry versions, current one first      |

The label config decides the output: the `<Choices>` tag whose labels equal the model's label set
gives `from_name`/`to_name`, and the `<Text value="$key">` it points at names the task data key.
A config whose labels differ from the model's is refused with a 422 naming the difference.

A generation champion fills `<TextArea>` configs (the *edit* project, annotation/config.py):
each task's prompt (the `<Text value="$key">` the TextArea points at; for $prompt, the exact
conversation in data `conversation` when the text shown is its transcript) goes through the service's
generation path (services/generation_api.py: the engine batches them with whatever else is
being generated), greedy, and comes back as one `textarea` result per task, in order. A config
without a `<TextArea>` (a compare project, whose two responses are task data; a classification
config) is a 422 saying what this model can fill.
"""

from __future__ import annotations

import base64
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from annotation.config import CONVERSATION_KEY, PROMPT_KEY
from labelloop.generation.chat import prompt_from
from services.runtime import BadRequest, LoadedModel, check_unicode, predict_with, secret_equals

logger = logging.getLogger("labelloop.serving.ls")

SECRET_HEADER = "X-Labelloop-Secret"
PASSWORD_ENV = "LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD"
WEBHOOK_SECRET_ENV = "LABELLOOP__SERVING__WEBHOOK_SECRET"


class LabelConfigError(BadRequest):
    """A label config that does not fit the served model."""


class AuthError(Exception):
    """`wrong`: the caller sent credentials and they were wrong (counted by the throttle)."""

    def __init__(self, status: int, message: str, wrong: bool = False,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.wrong = wrong
        self.headers = headers


# ---- label config -------------------------------------------------------------------------

@dataclass(frozen=True)
class ChoicesControl:
    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    choice: str = "single"  # LS `choice` attribute: single, single-radio or multiple


def _parse_xml(xml: str) -> ET.Element:
    """The label config's XML root, or a `LabelConfigError` (422) saying why there is none."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the label config is empty")
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from None


def parse_label_config(xml: str) -> list[ChoicesControl]:
    """All `<Choices>` controls of a label config, each resolved to the `<Text>` it labels."""
    root = _parse_xml(xml)
    texts: dict[str, str] = {}
    for el in root.iter():
        if el.tag in ("Text", "HyperText", "Paragraphs") and el.get("name"):
            value = el.get("value", "")
            if el.tag == "Text" and value.startswith("$") and len(value) > 1:
                texts[el.get("name")] = value[1:]
            else:
                texts.setdefault(el.get("name"), "")
    controls = []
    for el in root.iter("Choices"):
        name, to_name = el.get("name"), el.get("toName")
        if not name or not to_name:
            raise LabelConfigError("a <Choices> tag lacks its 'name' or 'toName' attribute")
        target = to_name.split(",")[0].strip()
        if target not in texts:
            raise LabelConfigError(
                f"<Choices name={name!r}> points at toName={target!r}, which is no <Text> tag "
                f"of the config (found: {sorted(texts) or 'none'})"
            )
        if not texts[target]:
            raise LabelConfigError(
                f"<Text name={target!r}> has no value=\"$key\"; the model reads plain text from "
                "a task data key"
            )
        labels = tuple(c.get("value") for c in el.iter("Choice") if c.get("value") is not None)
        controls.append(ChoicesControl(name, target, texts[target], labels,
                                       el.get("choice", "single")))
    if not controls:
        raise LabelConfigError(
            "the label config has no <Choices> tag; this backend serves text classification "
            "(<Text name=... value=\"$key\"/> with <Choices name=... toName=...>)"
        )
    return controls


def select_control(
    controls: Sequence[ChoicesControl], model_labels: Sequence[str],
    from_name: Optional[str] = None,
) -> ChoicesControl:
    """The control to predict for: `from_name` if given, else the one matching the labels."""
    if from_name is not None:
        found = [c for c in controls if c.from_name == from_name]
        if not found:
            raise LabelConfigError(
                f"unknown from_name {from_name!r}; the label config's <Choices> are "
                f"{[c.from_name for c in controls]}"
            )
        candidates = found
    else:
        candidates = list(controls)
    want = set(model_labels)
    for c in candidates:
        if set(c.labels) == want:
            return c
    c = candidates[0]
    missing, extra = sorted(want - set(c.labels)), sorted(set(c.labels) - want)
    raise LabelConfigError(
        f"label mismatch: <Choices name={c.from_name!r}> has labels {list(c.labels)} but the "
        f"served model predicts {list(model_labels)} (missing from config: {missing}; not known "
        f"to the model: {extra}). Fix the project's label config or serve a model for these labels"
    )


@dataclass(frozen=True)
class TextAreaControl:
    from_name: str
    to_name: str
    data_key: str


def parse_textarea_config(xml: str) -> TextAreaControl:
    """The first `<TextArea>` of a label config that points at a `<Text value="$key">`: what a
    generation model can fill. Anything else is a `LabelConfigError` (422) saying so."""
    root = _parse_xml(xml)
    texts = {el.get("name"): el.get("value", "")[1:] for el in root.iter("Text")
             if el.get("name") and el.get("value", "").startswith("$") and len(el.get("value")) > 1}
    for el in root.iter("TextArea"):
        name, to_name = el.get("name"), (el.get("toName") or "").split(",")[0].strip()
        if name and to_name in texts:
            return TextAreaControl(name, to_name, texts[to_name])
    found = sorted({el.tag for el in root.iter()} & {"Choices", "Pairwise", "Labels", "Rating"})
    raise LabelConfigError(
        "the served model generates text: it fills a <TextArea name=... toName=...> pointing at "
        "a <Text name=... value=\"$key\"/> (the edit project), and this label config has none"
        + (f" (it has {', '.join('<' + t + '>' for t in found)}: a compare project's two "
           "responses are task data, imported with the tasks, not predictions)"
           if "Pairwise" in found else (f" (it has {', '.join('<' + t + '>' for t in found)})"
                                        if found else "")))


def textarea_results(control: TextAreaControl, texts: Sequence[str],
                     model_version: str) -> list[dict]:
    """One LS prediction per task: a single `textarea` region with the response."""
    return [{"result": [{"from_name": control.from_name, "to_name": control.to_name,
                         "type": "textarea", "value": {"text": [text]}}],
             "score": 1.0, "model_version": model_version} for text in texts]


async def generate_for_tasks(state: Any, texts: list[str]) -> tuple[Any, list[str]]:
    """Greedy responses to the prompts through the service's generation path (one version for
    all of them). Returns (the model that answered, the responses in order)."""
    from services.generation_api import Job, Rejected, result_of, submit, wait_all
    from labelloop.generation_engine import Sampling

    # As long as the responses the loop pushes and scores (generation.max_new_tokens), within
    # what the served model can give.
    longest = min(state.settings.generation.max_new_tokens,
                  state.holder.current.generator.max_new_tokens)
    # A prompt too long for the engine is fitted as training fits it, as the pool import does
    # (labelloop.generation.feedback), not refused: one long task would fail the whole call.
    job = Job(list(texts), Sampling(max_new_tokens=longest), single=False, fit=True)
    try:
        model, reqs = await submit(lambda: state.holder.current, job)
        await wait_all(reqs)
    except Rejected as exc:
        raise BadRequest(exc.message, status=exc.status) from None
    outputs = [result_of(model.generator, r)["text"] for r in reqs]
    details = [{"finish_reason": r.finish_reason, "prompt_tokens": len(r.prompt_ids),
                "completion_tokens": len(r.tokens), "temperature": 0.0, "top_p": 1.0,
                "max_new_tokens": job.sampling.max_new_tokens} for r in reqs]
    state.plog.record_generation(list(texts), outputs, model.version, "ls", details)
    return model, outputs


def task_texts(tasks: Any, data_key: str, max_chars: int) -> list[str]:
    """The text of each task, in order; a missing or non-text data key is a 422."""
    if not isinstance(tasks, list):
        raise BadRequest("'tasks' must be a list of Label Studio tasks")
    out = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BadRequest(f"tasks[{i}] has no 'data' object")
        data = task["data"]
        tid = task.get("id", i)
        if data_key not in data:
            raise BadRequest(
                f"task {tid} has no data key {data_key!r} (the label config reads ${data_key}); "
                f"its keys are {sorted(data)}"
            )
        text = data[data_key]
        if not isinstance(text, str):
            raise BadRequest(f"task {str(tid)[:50]}: data[{data_key!r}] has type "
                             f"{type(text).__name__}, expected text")
        text = text[:max_chars]
        check_unicode(text, f"task {str(tid)[:50]}: data[{data_key!r}]")
        out.append(text)
    return out


def build_results(
    control: ChoicesControl, predictions: Sequence[dict], model_version: str
) -> list[dict]:
    """One LS prediction per task: a single `choices` region plus score and version."""
    return [
        {
            "result": [{
                "from_name": control.from_name,
                "to_name": control.to_name,
                "type": "choices",
                "value": {"choices": [p["label"]]},
                "score": p["score"],
            }],
            "score": p["score"],
            "model_version": model_version,
        }
        for p in predictions
    ]


# ---- auth -------------------------------------------------------------------------------

def basic_auth_ok(header: Optional[str], user: str, password: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    given_user, sep, given_pw = decoded.partition(":")
    if not sep:
        return False
    # evaluate both comparisons: no early exit that leaks which part was wrong
    ok_user = secret_equals(given_user, user)
    ok_pw = secret_equals(given_pw, password)
    return ok_user and ok_pw


def check_basic(request: Request, user: str, password: str) -> None:
    if not password:
        raise AuthError(403, f"Label Studio backend auth is not configured: set {PASSWORD_ENV} "
                             "(serving.ls_basic_auth_password); every call is refused until then")
    header = request.headers.get("authorization")
    if not header:
        raise AuthError(401, "HTTP Basic auth required (configure it in Label Studio's model "
                             "connection: Basic Authentication user and password)")
    if not basic_auth_ok(header, user, password):
        raise AuthError(401, "invalid Basic auth credentials", wrong=True)


def check_webhook(request: Request, secret: str, user: str, password: str) -> None:
    """Secret header (LS project webhooks) OR valid Basic auth (START_TRAINING from the ML connector)."""
    given = request.headers.get(SECRET_HEADER)
    if given is not None:
        if not secret:
            raise AuthError(403, f"webhook secret is not configured: set {WEBHOOK_SECRET_ENV} "
                                 "(serving.webhook_secret)")
        if secret_equals(given, secret):
            return
        raise AuthError(403, f"wrong {SECRET_HEADER}", wrong=True)
    header = request.headers.get("authorization")
    if password and basic_auth_ok(header, user, password):
        return
    if not secret and not password:
        raise AuthError(403, f"webhook auth is not configured: set {WEBHOOK_SECRET_ENV} "
                             f"(and/or {PASSWORD_ENV})")
    raise AuthError(401, f"send the {SECRET_HEADER} header (webhook secret) or HTTP Basic auth",
                    wrong=header is not None)


def throttled(request: Request, throttle: Any, check: Callable[[], None]) -> None:
    """Run an auth `check`, refusing with 429 a client address that sent too many wrong
    credentials this minute (serving.auth_failures_per_minute), whatever it sends now."""
    if throttle is None:
        check()
        return
    client = request.client.host if request.client else "?"
    wait = throttle.retry_after(client)
    if wait:
        raise AuthError(429, f"too many failed authentications from {client}; retry in "
                             f"{wait:.0f} s (serving.auth_failures_per_minute)",
                        headers={"Retry-After": str(max(1, round(wait)))})
    try:
        check()
    except AuthError as exc:
        if exc.wrong:
            throttle.failed(client)
        raise


# ---- app --------------------------------------------------------------------------------

def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="labelloop"'
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _json_body(request: Request) -> dict:
    from services.guard import parse_json

    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object", status=400)
    return body


def create_app(get_state: Callable[[], Any]) -> FastAPI:
    """The backend app. `get_state()` returns an object with `.settings`, `.holder` (ModelHolder),
    `.plog` (PredictionLog) and `.versions()`."""
    app = FastAPI(title="labelloop Label Studio ML backend", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest):
        return _error(exc.status, exc.message)

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError):
        return _error(exc.status, exc.message, exc.headers)

    def basic(request: Request):
        state = get_state()
        s = state.settings.serving
        throttled(request, getattr(state, "auth_throttle", None),
                  lambda: check_basic(request, s.ls_basic_auth_user, s.ls_basic_auth_password))
        return state

    @app.get("/health")
    @app.get("/")
    async def health(request: Request):
        state = basic(request)
        return {"status": "UP", "model_class": "labelloop",
                "model_version": state.holder.current.version}

    @app.post("/setup")
    async def setup(request: Request):
        state = basic(request)
        body = await _json_body(request)
        model: LoadedModel = state.holder.current
        schema = body.get("schema")
        if schema and model.generator is None:
            select_control(parse_label_config(schema), model.labels)
        elif schema and "<Pairwise" not in schema:
            # A generation model fills edit configs; a compare project may connect it too (for
            # "Start training") and never asks it for predictions it could not give.
            parse_textarea_config(schema)
        return {"model_version": model.version}

    @app.post("/predict")
    async def predict(request: Request):
        state = basic(request)
        body = await _json_body(request)
        if "tasks" not in body:
            raise BadRequest("missing 'tasks'")
        config = body.get("label_config")
        if not config:
            raise BadRequest("missing 'label_config' (the project's labeling XML)")
        model: LoadedModel = state.holder.current  # one version for the whole call
        if model.generator is not None:
            return await _predict_generation(state, body, config)
        params = body.get("params") or {}
        from_name = params.get("from_name") if isinstance(params, dict) else None
        if from_name is not None and not isinstance(from_name, str):
            raise BadRequest("'params.from_name' must be a string (a <Choices> name)")
        control = select_control(parse_label_config(config), model.labels, from_name)
        cfg = state.settings.serving
        tasks = body["tasks"]
        if isinstance(tasks, list) and len(tasks) > cfg.ls_max_tasks_per_request:
            raise BadRequest(f"{len(tasks)} tasks in one call; the maximum is "
                             f"{cfg.ls_max_tasks_per_request} "
                             "(serving.ls_max_tasks_per_request)", status=413)
        # cut to what the model reads before anything else touches the texts
        max_chars = min(cfg.max_text_chars, getattr(model.classifier, "max_chars", cfg.max_text_chars))
        texts = task_texts(tasks, control.data_key, max_chars)
        if not texts:
            return {"results": [], "model_version": model.version}
        preds = await run_in_threadpool(predict_with, model, texts, cfg.inference_batch_size)
        state.plog.record(texts, preds, model.version, source="ls")
        return {"results": build_results(control, preds, model.version),
                "model_version": model.version}

    async def _predict_generation(state, body: dict, config: str) -> dict:
        control = parse_textarea_config(config)
        cfg = state.settings.serving
        tasks = body["tasks"]
        limit = min(cfg.ls_max_tasks_per_request, cfg.generation.max_prompts_per_request)
        if isinstance(tasks, list) and len(tasks) > limit:
            raise BadRequest(f"{len(tasks)} tasks in one call; the maximum for a generation model "
                             f"is {limit} (serving.generation.max_prompts_per_request)", status=413)
        texts = task_texts(tasks, control.data_key, cfg.max_text_chars)
        if control.data_key == PROMPT_KEY:
            # A conversation's $prompt is its transcript; its exact prompt is kept beside it.
            texts = [prompt_from(text, t["data"].get(CONVERSATION_KEY)) for text, t in zip(texts, tasks)]
            for i, text in enumerate(texts):
                check_unicode(text, f"task {str(tasks[i].get('id', i))[:50]}: the prompt")
        for i, text in enumerate(texts):
            if not text.strip():
                tid = tasks[i].get("id", i)
                raise BadRequest(f"task {str(tid)[:50]}: data[{control.data_key!r}] is empty: no "
                                 "prompt to answer")
        if not texts:
            return {"results": [], "model_version": state.holder.current.version}
        model, outputs = await generate_for_tasks(state, texts)
        return {"results": textarea_results(control, outputs, model.version),
                "model_version": model.version}

    @app.post("/webhook")
    async def webhook(request: Request):
        state = get_state()
        s = state.settings.serving
        throttled(request, getattr(state, "auth_throttle", None),
                  lambda: check_webhook(request, s.webhook_secret, s.ls_basic_auth_user,
                                        s.ls_basic_auth_password))
        body = await _json_body(request)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("missing 'action' (e.g. START_TRAINING, ANNOTATION_CREATED)",
                             status=400)
        try:
            from annotation.webhook import handle_event
        except ImportError as exc:
            logger.error("annotation.webhook is not importable: %s", exc)
            return _error(503, "the feedback path (annotation.webhook) is not available")
        try:
            answer = await run_in_threadpool(handle_event, state.settings, body)
        except ValueError as exc:
            raise BadRequest(f"rejected webhook payload: {exc}", status=400) from None
        except (TypeError, KeyError, AttributeError, RecursionError) as exc:
            # A payload shape handle_event's checks did not foresee: still the sender's error.
            logger.warning("webhook payload not understood: %s: %s", type(exc).__name__,
                           str(exc)[:200])
            raise BadRequest(f"rejected webhook payload: unexpected shape ({type(exc).__name__}:"
                             f" {str(exc)[:200]})", status=400) from None
        if (answer or {}).get("outcomes"):
            # An annotator is at work: have the warm launcher ready before "Start training",
            # so that turn does not pay for the imports (labelloop/launcher.py). A no-op when
            # one runs; here, not in handle_event, so only a serving process starts one.
            from labelloop.trigger import ensure_launcher

            await run_in_threadpool(ensure_launcher, state.settings)
        return {"status": "ok", "action": action, **(answer or {})}

    @app.get("/versions")
    async def versions(request: Request):
        state = basic(request)
        return {"versions": await run_in_threadpool(state.versions)}

    return app
