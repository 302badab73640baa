"""Serving runtime without any web framework: the loaded champion, hot reload, input checks.

`ModelHolder.current` is an immutable `LoadedModel(version, classifier, ...)`. Readers grab it
once per batch, so every prediction of a batch comes from one version and names it. Reloading
builds the new `Classifier` completely (weights loaded, one warm-up forward pass) before the
single attribute assignment that swaps it in; requests in flight keep the pair they grabbed.
"""

from __future__ import annotations

import gc
import hmac
import logging
import threading
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from labelloop import provenance
from labelloop.generation_engine import is_generation_meta
from labelloop.modeling import Classifier, read_bundle_meta
from labelloop.settings import Settings

logger = logging.getLogger("labelloop.serving")


class NoChampionError(RuntimeError):
    """There is no model to serve yet."""


class BadRequest(ValueError):
    """Client input that cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LoadedModel:
    """One served version: a `classifier` or, for a generation bundle, a `generator`."""

    version: str
    classifier: Optional[Classifier]
    loaded_at: float = field(default_factory=time.time)
    generator: Any = None  # labelloop.generation_engine.Generator

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels if self.classifier is not None else []

    @property
    def task_type(self) -> str:
        return "generation" if self.generator is not None else "classification"

    def metadata(self, settings: Settings) -> dict[str, Any]:
        if self.generator is not None:
            gen = self.generator
            meta = gen.meta
            return {
                "model_name": settings.registry.model_name, "model_version": self.version,
                "alias": settings.registry.champion_alias, "task": meta.get("task"),
                "base_model": meta.get("base_model"), "dataset_digest": meta.get("dataset_digest"),
                "method": meta.get("method"), "created_at": meta.get("created_at"),
                "device": str(gen.device), "generation": gen.info(), **provenance.shown(meta),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            }
        meta = self.classifier.meta
        return {
            "model_name": settings.registry.model_name,
            "model_version": self.version,
            "alias": settings.registry.champion_alias,
            "labels": self.labels,
            "task": self.classifier.task.to_dict(),
            "base_model": meta.get("base_model"),
            "dataset_digest": meta.get("dataset_digest"),
            # What trained it, exactly (labelloop.provenance): sources and their digests, the
            # test split's and the human labels' digests, the labels store seq, and how texts
            # are cleaned and truncated (applied to every request).
            **provenance.shown(meta),
            "method": meta.get("method"),
            "max_length": self.classifier.max_length,
            "created_at": meta.get("created_at"),
            "device": str(self.classifier.device),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }

    @property
    def ready(self) -> bool:
        """False while a generation engine's process is being restarted (it died)."""
        return self.generator is None or self.generator.engine.ready

    def retire(self) -> None:
        """This version is no longer served: a generation engine finishes what it was given,
        then frees its device memory."""
        if self.generator is not None:
            self.generator.engine.retire()


def no_champion_message(settings: Settings) -> str:
    return (
        f"no '{settings.registry.champion_alias}' version of model "
        f"'{settings.registry.model_name}' in the MLflow registry at {settings.tracking_uri}; "
        "run `labelloop train` first (or set LABELLOOP__REGISTRY__TRACKING_URI to the registry "
        "that holds it)"
    )


def load_version(settings: Settings, version: str) -> LoadedModel:
    from labelloop import registry  # imports mlflow: only when the registry is used

    return load_bundle(settings, registry.fetch_bundle(settings, version), str(version))


def bundle_version(bundle_dir: str | Path) -> str:
    meta = read_bundle_meta(Path(bundle_dir))
    return str(meta.get("version") or f"bundle:{Path(bundle_dir).name}")


def load_bundle(settings: Settings, bundle: str | Path, version: str) -> LoadedModel:
    meta = read_bundle_meta(Path(bundle))
    if is_generation_meta(meta):
        return load_generation(settings, bundle, meta, str(version))
    clf = Classifier(bundle, device=settings.serving.device, version=str(version))
    if settings.serving.cpu_int8 and clf.device.type == "cpu":
        import torch

        clf.model = torch.ao.quantization.quantize_dynamic(
            clf.model, {torch.nn.Linear}, dtype=torch.qint8)
    if settings.serving.cuda_graphs and clf.device.type == "cuda":
        try:
            clf.enable_cuda_graphs(settings.serving.inference_batch_size)
            logger.info("captured %d CUDA graphs in %.1f s", len(clf.graphs),
                        clf.graphs.capture_seconds)
        except Exception as exc:  # noqa: BLE001 - eager inference still works, only slower
            clf.graphs = None
            logger.warning("CUDA graph capture failed (%s: %s); serving eagerly",
                           type(exc).__name__, exc)
    clf.predict(["warm-up"] * 8)  # first call allocates; do it before anyone waits on it
    return LoadedModel(version=str(version), classifier=clf)


def engine_in_own_process(settings: Settings) -> bool:
    """serving.generation.engine_process, `auto` resolved: its own process on a GPU, a thread of
    the API worker on a CPU. On an H100 the process served 15-45% more tokens/s than the thread
    at 64 streams and 44-64% more at 256, in the same GPU memory, with p99 times to first token
    at half of peak under 200 ms in both (three paired runs; docs/benchmarks.md, "Generation
    serving", fourteenth session); on a CPU the two cost the same, and the thread needs no
    second process."""
    choice = settings.serving.generation.engine_process
    if choice != "auto":
        return bool(choice)
    device = settings.serving.device
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def load_generation(settings: Settings, bundle: str | Path, meta: dict, version: str) -> LoadedModel:
    from labelloop.generation_engine import Generator, GenRequest, Sampling

    cfg, gen_cfg = settings.serving, settings.serving.generation
    gen = Generator(bundle, device=cfg.device, version=version, slots=gen_cfg.slots,
                    max_prompt_tokens=gen_cfg.max_prompt_tokens,
                    max_new_tokens=gen_cfg.max_new_tokens, max_waiting=gen_cfg.max_waiting,
                    prefill_tokens=gen_cfg.prefill_tokens, cuda_graphs=cfg.cuda_graphs,
                    stream_interval_s=gen_cfg.stream_interval_ms / 1000,
                    switch_interval_s=gen_cfg.gil_switch_interval_ms / 1000 or None,
                    admit_interval_s=gen_cfg.admit_interval_ms / 1000,
                    prefill_graphs=gen_cfg.prefill_graphs,
                    engine_process=engine_in_own_process(settings))
    warm = GenRequest(gen.encode("warm-up"), Sampling(max_new_tokens=4, ignore_eos=True),
                      blocking=True)
    gen.engine.submit([warm])  # first steps allocate (and capture a graph): not on a client
    warm.wait(120)  # with an engine process: also the whole path through the pipe
    pid = gen.info()["engine_pid"]
    logger.info("generation engine for version %s: %s, %s", version, gen.info()["engine"],
                f"in process {pid}" if pid else "a thread of this worker")
    return LoadedModel(version=str(version), classifier=None, generator=gen)


def settle_heap() -> None:
    """Take everything alive now (libraries, the loaded model) out of the garbage collector's
    sight. A full collection walks every tracked object with the GIL held: with torch,
    transformers and BentoML loaded that is ~440k objects and 200-250 ms, a pause that every
    request in flight waits out (on the H100, p99 of 400-900 ms at half of peak load while
    p50 was 13 ms). Frozen objects are still freed by reference counting. Unfreezing first and
    collecting once lets a replaced model's reference cycles go (one pause per reload)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHolder:
    """Holds the serving model; swaps it atomically when the champion alias moves."""

    def __init__(self, settings: Settings, loader: Callable[[Settings, str], LoadedModel] = load_version):
        self.settings = settings
        self._loader = loader
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None
        self.last_check: Optional[float] = None
        self.last_error: Optional[str] = None
        self.reloads = 0
        self.fixed_bundle = settings.serving.bundle_dir
        if self.fixed_bundle:
            version = bundle_version(self.fixed_bundle)
            self.current = load_bundle(settings, self.fixed_bundle, version)
            logger.info("serving bundle %s (version %s); registry not used", self.fixed_bundle,
                        version)
            return
        from labelloop import registry

        champion = registry.get_champion(settings)
        if champion is None:
            raise NoChampionError(no_champion_message(settings))
        self.current: LoadedModel = loader(settings, str(champion.version))
        logger.info("serving %s version %s", settings.registry.model_name, self.current.version)

    def check(self) -> dict[str, Any]:
        """Look up the champion; load and swap in a new one if it moved. Thread-safe."""
        with self._reload_lock:
            previous = self.current.version
            self.last_check = time.time()
            if self.fixed_bundle:
                return {"previous": previous, "current": previous, "changed": False,
                        "warning": "serving.bundle_dir is set: the registry is not consulted"}
            from labelloop import registry

            champion = registry.get_champion(self.settings)
            if champion is None:
                # alias removed: keep serving what we have rather than going dark
                self.last_error = "champion alias not found; keeping the loaded version"
                return {"previous": previous, "current": previous, "changed": False,
                        "warning": self.last_error}
            target = str(champion.version)
            if target == previous:
                self.last_error = None
                return {"previous": previous, "current": previous, "changed": False}
            logger.info("champion moved %s -> %s: loading", previous, target)
            new = self._loader(self.settings, target)  # fully loaded before the swap
            old, self.current = self.current, new  # one reference assignment: atomic for readers
            old.retire()
            del new, old
            settle_heap()
            self.reloads += 1
            self.last_error = None
            logger.info("now serving version %s", target)
            return {"previous": previous, "current": target, "changed": True}

    def start_polling(self, interval_s: float) -> None:
        if interval_s <= 0 or self._poller is not None or self.fixed_bundle:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.check()
                except Exception as exc:  # noqa: BLE001 - keep serving the old model
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("champion poll failed (still serving %s): %s",
                                   self.current.version, self.last_error)

        self._poller = threading.Thread(target=loop, name="champion-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        self.current.retire()


# ---- input checks (shared by /classify and the Label Studio backend) ------------------------

def text_cost(text: str, max_length: int) -> int:
    """Tokens a text can cost the model, known before tokenizing: every token covers at least
    one character, two special tokens are added, and the tokenizer keeps `max_length`."""
    return min(max_length, len(text) + 2)


def check_unicode(text: str, what: str) -> None:
    """A lone UTF-16 surrogate (JSON "\\ud800") is no Unicode text: the tokenizer, the JSON
    encoder and SQLite all fail on it, so it is refused here with its position."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{what} holds a lone UTF-16 surrogate at character {exc.start} "
                         f"({text[exc.start]!a}); send valid Unicode text") from None


def clean_texts(texts: Sequence[Any], settings: Settings, what: str = "texts",
                max_chars: Optional[int] = None, max_length: Optional[int] = None) -> list[str]:
    """Validate texts; returns the texts to feed the model, each cut to `max_chars` (what the
    model's `max_length` tokens can cover) before anything tokenizes it. With `max_length`, the
    request's token cost is checked against serving.max_request_tokens."""
    cfg = settings.serving
    if len(texts) == 0:
        raise BadRequest(f"'{what}' is empty: send at least one text")
    if len(texts) > cfg.max_texts_per_request:
        raise BadRequest(
            f"{len(texts)} texts in one request; the maximum is {cfg.max_texts_per_request} "
            "(serving.max_texts_per_request)", status=413,
        )
    cut = min(cfg.max_text_chars, max_chars or cfg.max_text_chars)
    out: list[str] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadRequest(f"{what}[{i}] has type {type(t).__name__}, expected a string")
        if len(t) > cfg.max_text_chars and cfg.oversize_text == "reject":
            raise BadRequest(
                f"{what}[{i}] has {len(t)} characters; the maximum is {cfg.max_text_chars} "
                "(serving.max_text_chars, serving.oversize_text=reject)", status=413,
            )
        # The model reads at most max_length tokens: cut long before tokenizing.
        t = t[:cut]
        if not t.strip():
            raise BadRequest(f"{what}[{i}] is empty or only whitespace")
        check_unicode(t, f"{what}[{i}]")
        out.append(t)
    if max_length:
        cost = sum(text_cost(t, max_length) for t in out)
        if cost > cfg.max_request_tokens:
            raise BadRequest(
                f"this request may cost {cost} tokens (min(max_length={max_length}, characters"
                f" + 2) per text); the maximum is {cfg.max_request_tokens} "
                "(serving.max_request_tokens): send fewer or shorter texts", status=413,
            )
    return out


def parse_classify_body(body: Any, settings: Settings, max_chars: Optional[int] = None,
                        max_length: Optional[int] = None) -> tuple[list[str], bool]:
    """`{"text": str}` or `{"texts": [str, ...]}` -> (texts, single)."""
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object: {"text": "..."} or {"texts": ["...", ...]}')
    unknown = set(body) - {"text", "texts"}
    if unknown:
        names = sorted(str(k)[:50] for k in unknown)[:10]
        raise BadRequest(f"unknown field(s) {names}; send 'text' or 'texts'")
    has_text, has_texts = body.get("text") is not None, body.get("texts") is not None
    if has_text == has_texts:
        raise BadRequest('send exactly one of "text" (a string) or "texts" (a list of strings)')
    if has_text:
        return clean_texts([body["text"]], settings, "text", max_chars, max_length), True
    texts = body["texts"]
    if not isinstance(texts, list):
        raise BadRequest(f"'texts' must be a list of strings, got type {type(texts).__name__}")
    return clean_texts(texts, settings, "texts", max_chars, max_length), False


def check_batch_body(body: Any, settings: Settings, max_chars: Optional[int] = None,
                     max_length: Optional[int] = None) -> None:
    """`/classify_batch` input, `{"requests": [[str, ...], ...]}`, checked like /classify's (each
    item as one request) before BentoML parses it; the whole body shares one token budget."""
    if not isinstance(body, dict) or set(body) != {"requests"}:
        raise BadRequest('expected {"requests": [["text", ...], ...]} (one list of texts per '
                         "request)")
    items = body["requests"]
    if not isinstance(items, list) or not items:
        raise BadRequest("'requests' must be a non-empty list of lists of strings")
    cfg = settings.serving
    if len(items) > cfg.max_batch_size:
        raise BadRequest(f"{len(items)} requests in one call; the maximum is "
                         f"{cfg.max_batch_size} (serving.max_batch_size)", status=413)
    cost = 0
    for i, texts in enumerate(items):
        if not isinstance(texts, list):
            raise BadRequest(f"requests[{i}] must be a list of strings, got type "
                             f"{type(texts).__name__}")
        clean = clean_texts(texts, settings, f"requests[{i}]", max_chars)
        cost += sum(text_cost(t, max_length) for t in clean) if max_length else 0
    if cost > cfg.max_request_tokens:
        raise BadRequest(f"this call may cost {cost} tokens; the maximum is "
                         f"{cfg.max_request_tokens} (serving.max_request_tokens)", status=413)


def predict_with(model: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> list[dict]:
    return [p.to_dict() for p in model.classifier.predict(texts, batch_size=batch_size)]


@dataclass(frozen=True)
class Encoded:
    """One request's texts, already tokenized by the request handler with `version`'s tokenizer
    (so the batched step only pads and runs the model)."""

    texts: list[str]
    ids: list[list[int]]
    version: str

    def __len__(self) -> int:
        return len(self.texts)


def predict_requests(model: LoadedModel, requests: Sequence[Any], batch_size: int = 256,
                     max_chars: int = 100_000) -> list[list[dict]]:
    """Predictions for a batch of requests (each a list of texts or an `Encoded`), one list per
    request, all from `model`. Tokenization done for another version is redone."""
    clf = model.classifier
    ids: list[list[int]] = []
    sizes: list[int] = []
    for req in requests:
        if isinstance(req, Encoded) and req.version == model.version:
            ids.extend(req.ids)
        else:
            texts = req.texts if isinstance(req, Encoded) else req
            ids.extend(clf.encode([t[:max_chars] for t in texts]))
        sizes.append(len(req))
    preds = [p.to_dict() for p in clf.task.predictions_from_logits(
        clf.logits_from_ids(ids, batch_size))]
    out, i = [], 0
    for n in sizes:
        out.append(preds[i:i + n])
        i += n
    return out


# ---- secrets -----------------------------------------------------------------------------

def secret_equals(given: Optional[str], expected: str) -> bool:
    """Constant-time comparison; an empty expected secret never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
