"""The labelloop BentoML service: the MLflow `champion` behind HTTP, plus a Label Studio ML backend.

Run it from the repository root with `bentoml serve` (bentofile.yaml names this class) or
`labelloop serve`. Settings come from `labelloop.settings.load_settings()`: $LABELLOOP_CONFIG and
LABELLOOP__SECTION__KEY environment variables (e.g. LABELLOOP__SERVING__ADMIN_TOKEN).

Routes:
  POST /classify          {"text": "..."} or {"texts": [...]} -> predictions + model_version
                          (services/hot_route.py: answered in front of the router)
  POST /classify_batch    internal: the adaptive-batching entry point /classify goes through
  GET  /metadata          model name, version, labels, task, base model, dataset digest
  POST /admin/reload      check the registry now (Authorization: Bearer <serving.admin_token>)
  GET  /healthz /livez    BentoML liveness;  GET /readyz: ready once the champion is loaded
  /ls/...                 Label Studio ML backend (services/ls_backend.py)
  GET  /status            the loop's status page for annotators (services/status_page.py)
  POST /argilla/webhook   Argilla's signed webhook deliveries (services/argilla_hook.py)
  POST /generate, /v1/chat/completions, /v1/completions, GET /v1/models
                          when the champion is a generation model (services/generation_api.py)
"""

from __future__ import annotations

import labelloop  # noqa: F401  (telemetry off, HF offline: before anything else is imported)

import logging
import os
import time
import typing as t

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from labelloop.prediction_log import PredictionLog
from labelloop.settings import Settings, load_settings
from services import argilla_hook, ls_backend, status_page
from services.balance import RecycleConnections
from services.hot_route import HotRoute
from services.batcher import MicroBatcher, Overloaded
from services.generation_api import GenerationAPI
from services.gpus import check_gpus, worker_device
from services.guard import AuthThrottle, Guard, bound_library_logs, host_policy, parse_json
from services.lifecycle import parent_alive, watch_parent
from services.runtime import (
    BadRequest,
    Encoded,
    ModelHolder,
    NoChampionError,
    check_batch_body,
    no_champion_message,
    parse_classify_body,
    predict_requests,
    secret_equals,
    settle_heap,
)

logger = logging.getLogger("labelloop.serving")

# Read once at import: BentoML needs workers/threads/batching parameters when the class is
# decorated. The same object is used by the running instance.
SETTINGS: Settings = load_settings()
_CFG = SETTINGS.serving
ADMIN_TOKEN_ENV = "LABELLOOP__SERVING__ADMIN_TOKEN"
# Requests up to this many texts are tokenized in the handler (tens of microseconds per text);
# larger ones in the batch thread, so one big request never stalls the event loop.
PRE_TOKENIZE_MAX_TEXTS = 16
# A request shed under overload (503) tells the client when to come back: clients that retry at
# once keep the worker busy refusing them (a closed loop of 256 clients got 96% 503s that way).
SHED_HEADERS = {"Retry-After": "1"}

_current: dict[str, t.Any] = {"service": None}

# A bad body costs one log line, and only a few per minute reach the log (services/guard.py).
bound_library_logs()


def _state() -> "Labelloop":
    svc = _current["service"]
    if svc is None:
        raise ls_backend.AuthError(503, "the model is still loading")
    return svc


# ---- plain HTTP routes next to the BentoML APIs (GET /metadata, POST /admin/reload) -----------
ops_app = FastAPI(title="labelloop ops", docs_url=None, redoc_url=None, openapi_url=None)


@ops_app.exception_handler(ls_backend.AuthError)
async def _ops_auth_error(_: Request, exc: ls_backend.AuthError):
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


@ops_app.get("/metadata")
async def metadata():
    svc = _state()
    return svc.metadata()


def _check_admin(request: Request, token: str) -> None:
    if not token:
        raise ls_backend.AuthError(403, f"admin calls are disabled: set {ADMIN_TOKEN_ENV} "
                                        "(serving.admin_token)")
    header = request.headers.get("authorization") or ""
    if not header.lower().startswith("bearer "):
        raise ls_backend.AuthError(401, "send Authorization: Bearer <admin token>",
                                   wrong=bool(header), headers={"WWW-Authenticate": "Bearer"})
    if not secret_equals(header[7:].strip(), token):
        raise ls_backend.AuthError(403, "invalid admin token", wrong=True)


@ops_app.post("/admin/reload")
async def admin_reload(request: Request):
    svc = _state()
    ls_backend.throttled(request, svc.auth_throttle,
                         lambda: _check_admin(request, svc.settings.serving.admin_token))
    try:
        return await run_in_threadpool(svc.holder.check)
    except Exception as exc:  # noqa: BLE001 - report, keep serving the loaded version
        logger.warning("admin reload failed: %s: %s", type(exc).__name__, exc)
        return JSONResponse({"error": f"reload failed ({type(exc).__name__}: {exc}); still "
                                      f"serving version {svc.holder.current.version}"},
                            status_code=502)


ls_app = ls_backend.create_app(_state)
status_app = status_page.create_app(_state)
argilla_app = argilla_hook.create_app(_state)


@bentoml.asgi_app(ops_app, path="/")  # mounted passively: only its own routes match
@bentoml.asgi_app(ls_app, path="/ls")
@bentoml.asgi_app(status_app, path="/status")
@bentoml.asgi_app(argilla_app, path="/argilla")
@bentoml.service(
    name="labelloop",
    workers=_CFG.workers,
    threads=_CFG.threads,
    traffic={"timeout": _CFG.request_timeout_s},
    http={"host": _CFG.host, "port": _CFG.port},
    logging={"access": {"enabled": False}},
    metrics={"enabled": _CFG.metrics},
    # BentoML always wraps requests in OpenTelemetry's ASGI middleware; an excluded URL makes
    # it step aside before creating a span (serving.tracing: false).
    tracing={} if _CFG.tracing else {"excluded_urls": [".*"]},
    # /classify reaches the batchable API through BentoML's in-process self-proxy. BentoML
    # 1.4.38 recreates that proxy's HTTP session every `max_requests` calls (default 100) and
    # closes the old one with requests still in flight on it ("Server disconnected" -> 500s
    # under load). Never recycling the in-process session avoids that.
    runner_connection={"max_requests": 2**62, "max_age": 10.0**12},
)
class Labelloop:
    """Serves the registry's champion; hot-reloads when the alias moves."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        if SETTINGS.serving.gpus:  # this worker's own GPU (services/gpus.py)
            import torch

            SETTINGS.serving.device = worker_device(SETTINGS.serving,
                                                    bentoml.server_context.worker_index)
            torch.cuda.set_device(SETTINGS.serving.device)
        try:
            self.holder = ModelHolder(self.settings)
        except NoChampionError as exc:
            logger.error("labelloop service cannot start: %s", exc)
            raise
        cfg = self.settings.serving
        self.plog = PredictionLog(
            self.settings.prediction_log_path, max_rows=cfg.prediction_log_max_rows,
            max_queued_rows=cfg.prediction_log_queue_rows, enabled=cfg.prediction_log,
            text_chars=cfg.prediction_log_text_chars,
        )
        # Wrong credentials per client address (services/guard.py), shared by every auth check.
        self.auth_throttle = AuthThrottle(cfg.auth_failures_per_minute)
        # What adaptive batching did so far (batches formed, requests and texts in them).
        self.batch_stats = {"batches": 0, "requests": 0, "texts": 0, "largest_batch": 0}
        self.batcher = None
        if cfg.batcher == "inprocess":
            self.batcher = MicroBatcher(self._infer, max_batch_texts=cfg.max_batch_size,
                                        max_latency_ms=cfg.max_latency_ms)
        self.gen_api = GenerationAPI(self)  # answers only while a generation model is served
        settle_heap()  # after loading, before serving: no full-collection pauses later
        self.holder.start_polling(cfg.poll_interval_s)
        # An orphaned worker (its `bentoml serve` parent killed) exits instead of holding the
        # port unsupervised (services/lifecycle.py); what the log queued is flushed first.
        watch_parent(on_orphan=lambda: self.plog.close(timeout_s=2.0))
        _current["service"] = self

    @bentoml.on_deployment
    def _preflight() -> None:
        """Once, in the serving process, before any worker starts: fail fast (instead of
        workers restarting forever) when there is no champion, and download its bundle once."""
        if SETTINGS.serving.gpus:
            import torch

            try:
                check_gpus(SETTINGS.serving, torch.cuda.device_count())
            except ValueError as exc:
                raise SystemExit(f"labelloop serve: error: {exc}") from None
        if SETTINGS.serving.bundle_dir:
            from services.runtime import bundle_version

            try:
                bundle_version(SETTINGS.serving.bundle_dir)
            except Exception as exc:  # noqa: BLE001
                raise SystemExit(f"labelloop serve: error: serving.bundle_dir: {exc}") from None
            return
        from labelloop import registry

        try:
            champion = registry.get_champion(SETTINGS)
        except Exception as exc:  # noqa: BLE001 - an unreachable registry is a start-up error
            raise SystemExit(f"labelloop serve: error: cannot reach the MLflow registry at "
                             f"{SETTINGS.tracking_uri}: {exc}") from None
        if champion is None:
            raise SystemExit(f"labelloop serve: error: {no_champion_message(SETTINGS)}")
        registry.fetch_bundle(SETTINGS, champion.version)

    def __is_ready__(self) -> bool:
        # Not ready once the parent is gone: the worker is about to exit (services/lifecycle.py).
        # Nor while a generation engine's process is being restarted (labelloop/engine_process.py).
        return _current["service"] is self and parent_alive() and self.holder.current.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.holder.stop()
        self.plog.close()

    # ---- helpers used by the mounted apps -------------------------------------------------
    def metadata(self) -> dict[str, t.Any]:
        cfg = self.settings.serving
        info = self.holder.current.metadata(self.settings)
        info.update({
            "tracking_uri": self.settings.tracking_uri,
            "worker_pid": os.getpid(),  # which of serving.workers processes answered
            "reloads": self.holder.reloads,
            "poll_interval_s": cfg.poll_interval_s,
            "last_registry_check": self.holder.last_check,
            "last_reload_error": self.holder.last_error,
            "batching": {"max_batch_size": cfg.max_batch_size,
                         "max_latency_ms": cfg.max_latency_ms},
            "batch_stats": dict(self.batch_stats),
            "prediction_log": self.plog.stats(),
        })
        return info

    def versions(self) -> list[str]:
        current = self.holder.current.version
        if self.settings.serving.bundle_dir:
            return [current]
        try:
            from labelloop import registry

            found = [str(mv.version) for mv in registry.list_versions(self.settings)
                     if mv.tags.get(registry.STATUS_TAG) == "ready"]
        except Exception:  # noqa: BLE001 - the registry may be away; the loaded one is known
            found = []
        others = sorted({v for v in found if v != current}, key=int, reverse=True)
        return [current, *others]

    # ---- APIs -------------------------------------------------------------------------
    @bentoml.api(
        batchable=True,
        max_batch_size=_CFG.max_batch_size,
        max_latency_ms=_CFG.max_latency_ms,
        route="/classify_batch",
    )
    def classify_batch(self, requests: list[list[str]]) -> list[dict[str, t.Any]]:
        """Internal batching unit: each item is one request's texts; a request is never split,
        so all its predictions come from one model version. Reachable over HTTP like every
        BentoML API: a direct caller gets at most serving.max_texts_per_request texts answered
        per item (no error, so one bad item never fails the other requests of its batch)."""
        cap = self.settings.serving.max_texts_per_request
        return self._infer([texts[:cap] for texts in requests])

    def window(self) -> tuple[int, int]:
        """(characters, tokens) of a text the loaded model reads: texts are cut to the first."""
        clf = self.holder.current.classifier
        if clf is None:  # a generation model: /classify refuses before this matters
            return self.settings.serving.max_text_chars, 0
        return clf.max_chars, clf.max_length

    def _infer(self, requests: t.Sequence[t.Any]) -> list[dict[str, t.Any]]:
        """One forward pass for a batch of requests (shared by both batchers): each request is
        a list of texts or an `Encoded` (tokenized by the handler); never split."""
        model = self.holder.current  # grabbed once: the whole batch uses one version
        cfg = self.settings.serving
        per_request = predict_requests(model, requests, cfg.inference_batch_size,
                                       cfg.max_text_chars)
        stats = self.batch_stats
        stats["batches"] += 1
        stats["requests"] += len(requests)
        stats["texts"] += sum(len(r) for r in requests)
        stats["largest_batch"] = max(stats["largest_batch"], len(requests))
        return [{"model_version": model.version, "predictions": preds} for preds in per_request]

    async def classify(self, body: t.Any) -> JSONResponse:
        """Classify `text` (one string) or `texts` (a list of strings): label, score and all
        class probabilities per text, and the model version that produced them."""
        current = self.holder.current
        if current.classifier is None:
            return JSONResponse({"error": f"the served model (version {current.version}) is a "
                                          f"{current.task_type} model: use POST /generate"},
                                status_code=409)
        try:
            clean, single = parse_classify_body(body, self.settings, *self.window())
        except BadRequest as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        t0 = time.perf_counter()
        if self.batcher is not None:
            job: t.Any = clean
            if len(clean) <= PRE_TOKENIZE_MAX_TEXTS:
                # Tokenize here, spread over requests (and workers), not in the batched step.
                model = self.holder.current
                job = Encoded(clean, model.classifier.encode(clean), model.version)
            try:
                result = await self.batcher.submit(job)
            except Overloaded as exc:
                return JSONResponse({"error": f"overloaded: {exc}"}, status_code=503,
                                    headers=SHED_HEADERS)
        else:
            try:
                result = (await self.to_async.classify_batch([clean]))[0]
            except bentoml.exceptions.ServiceUnavailable:
                # BentoML's batcher sheds load when a request would wait over max_latency_ms
                return JSONResponse({"error": "overloaded: the model is busy beyond "
                                              "serving.max_latency_ms; retry"}, status_code=503,
                                    headers=SHED_HEADERS)
        version, preds = result["model_version"], result["predictions"]
        self.plog.record(clean, preds, version, source="classify")
        answer: dict[str, t.Any] = {"model_version": version, "predictions": preds}
        if single:
            answer.update(preds[0])
        answer["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return JSONResponse(answer)


if _CFG.workers > 1 and (_CFG.max_requests_per_connection > 0 or _CFG.max_connection_age_s > 0):
    Labelloop.add_asgi_middleware(RecycleConnections,
                                  max_requests=_CFG.max_requests_per_connection,
                                  max_age_s=_CFG.max_connection_age_s)


def _check_body(path: str, raw: bytes) -> None:
    """/classify_batch bodies, checked before BentoML parses them (a 4xx with a message instead
    of a logged traceback; the same bounds as /classify)."""
    svc = _current["service"]
    if path == "/classify_batch" and svc is not None:
        check_batch_body(parse_json(raw), svc.settings, *svc.window())


def _classify_handler():
    svc = _current["service"]
    if svc is None:
        raise LookupError("the model is still loading")
    return svc.classify


# Generation routes (services/generation_api.py), answered like /classify in front of the router.
GENERATION_ROUTES = {"/generate": "generate", "/v1/chat/completions": "chat_completions",
                     "/v1/completions": "completions"}


def _generation_handler(name: str):
    def get():
        svc = _current["service"]
        if svc is None:
            raise LookupError("the model is still loading")
        return getattr(svc.gen_api, name)
    return get


# POST /classify: a pure ASGI endpoint in front of the router (services/hot_route.py says why).
# Added last: middlewares added earlier wrap later ones, so connection recycling sees it.
# Host check, JSON-only bodies, /classify_batch checked before BentoML parses it: outside the
# /classify endpoint, so it guards that too (services/guard.py).
Labelloop.add_asgi_middleware(
    Guard, hosts=host_policy(_CFG.host, _CFG.allowed_hosts),
    json_routes=("/classify", "/classify_batch", "/ls/setup", "/ls/predict", "/ls/webhook",
                 "/argilla/webhook", *GENERATION_ROUTES),
    read_routes=("/classify_batch",), max_body_bytes=int(_CFG.max_request_mb * 2**20),
    check_body=_check_body)
Labelloop.add_asgi_middleware(HotRoute, path="/classify", get_handler=_classify_handler,
                              max_body_bytes=int(_CFG.max_request_mb * 2**20))
for _path, _name in GENERATION_ROUTES.items():
    Labelloop.add_asgi_middleware(HotRoute, path=_path, get_handler=_generation_handler(_name),
                                  max_body_bytes=int(_CFG.max_request_mb * 2**20))
Labelloop.add_asgi_middleware(HotRoute, path="/v1/models", method="GET",
                              get_handler=_generation_handler("models"))
