"""Model loading and the model bundle: the one directory format every part of labelloop shares.

A *bundle* is a Hugging Face model directory (weights, config, tokenizer) plus `labelloop.json`
with the task, base model, max length and the digest of the data it was trained on. LoRA
adapters are merged into the weights before saving, so serving needs nothing but the bundle and
pays no adapter overhead. The registry stores bundles; the service, the evaluation step and
the annotation tools load them through `Classifier`.
"""

from __future__ import annotations

import json
import time
import types
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

from labelloop.cleaning import Cleaning
from labelloop.decision import offsets_from_meta
from labelloop.errors import ModelError  # noqa: F401  (labelloop.modeling.ModelError)
from labelloop.settings import ConfigError, resolve_path
from labelloop.tasks import ClassificationTask, Prediction, task_from_dict

BUNDLE_META = "labelloop.json"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {requested!r} requested but no CUDA GPU is available")
    return torch.device(requested)


def resolve_base_model(spec: str) -> str:
    """A local directory (or `package:` path) must exist; anything else must be a cached hub id.

    Hugging Face is kept offline, so a hub id only works if it is already in the local cache.
    """
    looks_local = spec.startswith(("package:", "/", ".", "~")) or Path(spec).exists()
    if looks_local:
        try:
            path = resolve_path(spec)
        except ConfigError as exc:
            raise ModelError(str(exc)) from exc
        if not (path / "config.json").is_file():
            raise ModelError(f"base model {spec!r}: no Hugging Face model directory at {path}")
        return str(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id is "not cached" too
        cached = None
    if not isinstance(cached, str):
        raise ModelError(
            f"base model {spec!r} is neither a local model directory nor in the Hugging Face "
            "cache (labelloop runs offline; download it once or point model.base at a directory)"
        )
    return spec


def load_tokenizer(name_or_path: str):
    return AutoTokenizer.from_pretrained(name_or_path)


def load_base_classifier(name_or_path: str, task: ClassificationTask, init: str = "pretrained",
                         scratch_config: Optional[dict[str, Any]] = None, tokenizer=None,
                         pooling: str = "auto"):
    """The base encoder with a fresh classification head sized for the task's labels.

    Always fp32 master weights: transformers 5 would otherwise keep a bf16 checkpoint in bf16,
    and AdamW updates on bf16 weights lose most of their precision. (bf16 is used for the
    matrix products only, through autocast.) `init="scratch"`: every weight random, from the
    base's config or `scratch_config` (model.init / model.scratch_config), sized to `tokenizer`.
    `pooling` (model.pooling): what the head reads; a labelloop bundle as the base (a warm
    start) keeps the pooling it was trained with.
    """
    if init == "scratch":
        model = _scratch_classifier(name_or_path, task, scratch_config, tokenizer)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path,
            dtype=torch.float32,
            num_labels=len(task.labels),
            id2label=task.id2label,
            label2id=task.label2id,
            ignore_mismatched_sizes=True,
        )
    recorded = getattr(model.config, POOLING_KEY, None)
    if recorded:
        return apply_pooling(model, recorded)
    if pooling == "auto":  # the base's own pooling, where it was trained and the head allows
        pooling = resolve_pooling("auto", name_or_path) if init == "pretrained" else "cls"
        # ... and only into a linear head: all-mpnet-base-v2's dense-tanh head over the mean
        # scored below its own first-token reading (demo profile -0.008 / -0.012, two seeds;
        # full corpus -0.003), so `mean` for such heads is there when asked for, never by auto
        if pooling == "mean" and not _linear_head(model):
            pooling = "cls"
    return apply_pooling(model, pooling)


# Where a model records its pooling: its own HF config (config.json), so every copy of the
# weights (bundles, a data-parallel run's hand-over directory) says how to read them.
POOLING_KEY = "labelloop_pooling"


def resolve_pooling(spec: str, base: str) -> str:
    """model.pooling `auto`: what the base was trained to pool. A sentence-transformers model
    (all-MiniLM and kin) says so in `1_Pooling/config.json`: mean of the token states, never
    tuned to put the text's meaning in the first token. Anything else: `cls`, the model's own
    head."""
    if spec != "auto":
        return spec
    path = Path(base) / "1_Pooling" / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base, "1_Pooling/config.json")
        except Exception:  # noqa: BLE001 - not a hub id: no sentence-transformers pooling
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    try:
        modes = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        modes = {}
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls"


def apply_pooling(model, pooling: str):
    """Make `model` read the mean of its token states (`mean`), or leave its own head (`cls`).

    Mean pooling keeps the architecture's weights and names (a bundle is still a plain HF
    directory) and replaces only what feeds the classifier: the attention-masked mean of the
    last hidden states, through the model's dropout, into its linear `classifier` (or, for a
    head that reads the first token itself, in that token's place). The
    encoder's own pooler (BERT's dense layer over the first token) is then unused, so it is
    frozen: it keeps the base's weights and takes no gradient (data-parallel runs need every
    trained weight used)."""
    if pooling == "cls":  # nothing to change, nothing to record (no key reads as cls)
        return model
    if pooling != "mean":
        raise ModelError(f"model.pooling {pooling!r}: use auto, cls or mean")
    if not supports_mean_pooling(model):
        raise ModelError(
            f"model.pooling mean needs a model whose head is one linear layer over a pooled "
            f"vector (BERT-style) or reads the first token (RoBERTa-style); "
            f"{type(model).__name__} has another head: use pooling: cls")
    pooler = getattr(model.base_model, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)
    # decided here: PEFT later wraps the head (modules_to_save), hiding what kind it is
    setattr(model, _FIRST_TOKEN_HEAD, not _linear_head(model))
    model.forward = types.MethodType(_mean_pooled_forward, model)
    setattr(model.config, POOLING_KEY, "mean")
    return model


_FIRST_TOKEN_HEAD = "_labelloop_first_token_head"


def supports_mean_pooling(model) -> bool:
    """A head that is one linear layer (after dropout) over a pooled vector (BERT and kin), or
    one that reads the first token's state itself through `dense` and `out_proj` (RoBERTa,
    MPNet and kin: it is given the mean in that token's place)."""
    return _linear_head(model) or _first_token_head(model)


def _linear_head(model) -> bool:
    return isinstance(getattr(model, "classifier", None), torch.nn.Linear) and \
        isinstance(getattr(model, "dropout", None), torch.nn.Module)


def _first_token_head(model) -> bool:
    head = getattr(model, "classifier", None)
    return isinstance(head, torch.nn.Module) and all(
        isinstance(getattr(head, name, None), torch.nn.Linear) for name in ("dense", "out_proj"))


def _mean_pooled_forward(self, input_ids=None, attention_mask=None, output_hidden_states=None,
                         **kwargs):
    """The classifier over the masked mean of the token states (see apply_pooling). Takes and
    ignores what PEFT's and transformers' callers pass besides ids and mask."""
    out = self.base_model(input_ids=input_ids, attention_mask=attention_mask,
                          output_hidden_states=output_hidden_states)
    states = out.last_hidden_state
    if attention_mask is None:
        pooled = states.mean(dim=1)
    else:
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if getattr(self, _FIRST_TOKEN_HEAD, False):  # it reads the first token (own dropout)
        logits = self.classifier(pooled.unsqueeze(1))
    else:
        logits = self.classifier(self.dropout(pooled))
    return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)


def load_bundle_model(bundle_dir: str | Path, dtype=torch.float32):
    """A saved classifier (bundle or hand-over directory) as it was trained, pooling included."""
    model = AutoModelForSequenceClassification.from_pretrained(str(bundle_dir), dtype=dtype)
    return apply_pooling(model, getattr(model.config, POOLING_KEY, None) or "cls")


def _scratch_classifier(name_or_path: str, task: ClassificationTask,
                        scratch_config: Optional[dict[str, Any]], tokenizer):
    from transformers import AutoConfig

    if scratch_config:
        spec = dict(scratch_config)
        kind = spec.pop("model_type", None)
        try:
            config = AutoConfig.for_model(kind, **spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.scratch_config: {exc}") from exc
    else:
        config = AutoConfig.from_pretrained(name_or_path)
    config.num_labels = len(task.labels)
    config.id2label, config.label2id = task.id2label, task.label2id
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        if tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
    try:
        return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    except ValueError as exc:
        raise ConfigError(f"model.scratch_config: {config.model_type} has no sequence "
                          f"classification model ({exc})") from exc


def save_bundle(model, tokenizer, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write a bundle; a PEFT model is merged first so the bundle is self-contained."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to("cpu", dtype=torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    meta = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
    (out_dir / BUNDLE_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out_dir


def read_bundle_meta(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / BUNDLE_META
    if not path.is_file():
        raise ModelError(f"{bundle_dir} is not a labelloop model bundle (no {BUNDLE_META})")
    return json.loads(path.read_text())


# Up to this many texts are tokenized without releasing the GIL (see Classifier.encode).
SMALL_ENCODE = 16

# Characters the model's `max_length` tokens can plausibly cover: a WordPiece/BPE token of
# real text averages 4-5 characters, so 32 per token keeps long words, URLs and whitespace runs
# and still bounds the work: a 100,000-character text is tokenized as 2,048 characters at
# max_length 64 instead of in full (the tokenizer's truncation comes only after it read it all).
CHARS_PER_TOKEN = 32


def max_chars_for(max_length: int) -> int:
    return max_length * CHARS_PER_TOKEN


# -- truncation: which tokens of a long text the model reads (`model.truncation`) ----------------
TRUNCATIONS = ("head", "tail", "head_tail")


def select_tokens(ids: list[int], budget: int, strategy: str) -> list[int]:
    """At most `budget` token ids. head_tail keeps the first quarter and the last three quarters
    (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": head 128 + tail 382 of
    512 read long reviews best; a review's verdict tends to sit at its end)."""
    if len(ids) <= budget:
        return list(ids)
    if strategy == "head":
        return list(ids[:budget])
    if strategy == "tail":
        return list(ids[len(ids) - budget:])
    head = budget // 4
    return list(ids[:head]) + list(ids[len(ids) - (budget - head):])


def cut_chars(text: str, max_chars: int, strategy: str) -> str:
    """Cut a text to the characters `strategy` may read, before tokenizing (cheap: tokenizing
    costs what the text holds); max_chars covers max_length tokens with room to spare."""
    if len(text) <= max_chars:
        return text
    if strategy == "head":
        return text[:max_chars]
    if strategy == "tail":
        return text[-max_chars:]
    return text[:max_chars] + " " + text[-max_chars:]


def encode_texts(tokenizer, texts: Sequence[str], max_length: int,
                 strategy: str = "head") -> list[list[int]]:
    """Token ids (special tokens added, not padded) of texts, truncated by `strategy`: the one
    definition training, evaluation and serving share."""
    texts = [cut_chars(t, max_chars_for(max_length), strategy) for t in texts]
    if strategy == "head":
        return [list(x) for x in tokenizer(texts, truncation=True,
                                           max_length=max_length)["input_ids"]]
    if strategy not in TRUNCATIONS:
        raise ModelError(f"unknown truncation {strategy!r}; known: {list(TRUNCATIONS)}")
    prefix, suffix = special_tokens_around(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    body = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [prefix + select_tokens(b, budget, strategy) + suffix for b in body]


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text ([CLS] / [SEP], <s> /
    </s>): found by encoding a word with and without them."""
    full = list(tokenizer("a")["input_ids"])
    body = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    raise ModelError("cannot tell where this tokenizer puts its special tokens; use "
                     "model.truncation: head")


def tokenize_padded(tokenizer, texts: Sequence[str], max_length: int,
                    strategy: str = "head") -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask`, padded to max_length, for training."""
    if strategy == "head":  # exactly what training always did
        return tokenizer(list(texts), truncation=True, max_length=max_length,
                         padding="max_length", return_tensors="pt")
    ids = encode_texts(tokenizer, texts, max_length, strategy)
    pad = int(tokenizer.pad_token_id or 0)
    input_ids = torch.full((len(ids), max_length), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), max_length), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, :len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def text_meta(cleaning: Cleaning, truncation: str) -> dict[str, Any]:
    """What a bundle records about how its texts were read (`labelloop.json`)."""
    return {"cleaning": cleaning.to_dict(), "truncation": truncation}


class Classifier:
    """A loaded bundle ready for batched inference: load once, call many times.

    Inference is split in two so a server can tokenize in its request handlers (spread over
    requests and workers) and keep the batched step to padding and the forward pass:
    `encode(texts)` -> token ids, `logits_from_ids(ids)` -> logits. `logits(texts)` does both.

    The logits it returns are the decision logits: the model's plus the per-class offsets the
    bundle records (`decision_bias`, labelloop/decision.py; none: the model's own), so every
    prediction, probability and argmax taken from them decides by the bundle's rule.
    `raw_logits_from_ids` / `raw_logits` are the model's alone.
    """

    cleaning: Cleaning = Cleaning()  # what an old bundle without a recorded cleaning gets
    truncation: str = "head"

    def __init__(self, bundle_dir: str | Path, device: str = "auto", version: str | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.meta = read_bundle_meta(self.bundle_dir)
        self.task: ClassificationTask = task_from_dict(self.meta["task"])
        self.max_length: int = int(self.meta.get("max_length", 128))
        # How this model's texts were cleaned and truncated when it was trained: applied to
        # every text it reads, so serving sees what training saw. (None recorded: none, head.)
        self.cleaning = Cleaning.from_meta(self.meta.get("cleaning"))
        self.truncation: str = self.meta.get("truncation") or "head"
        # Per-class offsets added to every logit (training.decision_bias); None: none.
        self.decision_bias = offsets_from_meta(self.meta, self.task.labels)
        # Callers (the service) may cut a text's head to this many characters before `encode`;
        # a model that reads the end of texts needs them whole (encode cuts them itself).
        self.max_chars: int = (max_chars_for(self.max_length) if self.truncation == "head"
                               else 10**9)
        self.version = version or self.meta.get("version")
        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(str(self.bundle_dir))
        self._fast = _fast_tokenizer(self.tokenizer, self.max_length)
        self.pad_token_id = int(self.tokenizer.pad_token_id or 0)
        # bf16 on GPU halves memory traffic; CPUs without bf16 units are faster in fp32.
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = load_bundle_model(self.bundle_dir, dtype).to(self.device).eval()
        self.graphs = None  # a GraphedForward once enable_cuda_graphs() ran
        # CPU: the forward pass is compute bound, so padding is real work. Sorted texts are cut
        # into chunks of at most this many so a batch pads little (GPUs prefer one big chunk).
        self.cpu_chunk = 16

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    def enable_cuda_graphs(self, max_batch: int = 256) -> "Classifier":
        """Capture the forward pass for every padded shape up to `max_batch` texts (GPU only)."""
        from labelloop.cuda_graphs import GraphedForward

        if self.device.type != "cuda":
            raise ModelError("CUDA graphs need a CUDA device")
        self.graphs = GraphedForward(self.model, max_batch, self.max_length,
                                     self.pad_token_id).capture()
        return self

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated to max_length, not padded), after
        the model's recorded cleaning. Texts are cut to the characters the model can read first:
        tokenizing costs what the text holds, not what the model reads."""
        if not self.cleaning.is_identity:
            texts = self.cleaning.texts(texts)
        if self.truncation != "head":
            return encode_texts(self.tokenizer, texts, self.max_length, self.truncation)
        cut = self.max_chars  # (reading the head, this is the window)
        texts = [t if len(t) <= cut else t[:cut] for t in texts]
        if self._fast is not None:
            if len(texts) <= SMALL_ENCODE:
                # One by one: `encode` keeps the GIL. `encode_batch` releases it, and getting it
                # back while another thread runs Python (the serving batch thread) takes up to
                # the interpreter's switch interval (5 ms) for ~30 us of tokenizing.
                return [self._fast.encode(t).ids for t in texts]
            return [e.ids for e in self._fast.encode_batch(list(texts))]
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [list(x) for x in enc["input_ids"]]

    def logits_from_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 256) -> np.ndarray:
        """Decision logits for tokenized texts, in input order: the model's (eager or CUDA
        graphs) plus the bundle's decision bias. What every prediction is made from."""
        out = self.raw_logits_from_ids(ids, batch_size)
        if self.decision_bias is not None:
            out += self.decision_bias
        return out

    @torch.inference_mode()
    def raw_logits_from_ids(self, ids: Sequence[Sequence[int]],
                            batch_size: int = 256) -> np.ndarray:
        """The model's logits for tokenized texts, in input order (no decision bias). Sorted by
        length so batches pad little."""
        n_labels = len(self.task.labels)
        if len(ids) == 0:
            return np.zeros((0, n_labels), dtype=np.float32)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(ids), n_labels), dtype=np.float32)
        if self.graphs is not None:
            step = min(batch_size, self.graphs.max_batch)
        elif self.device.type == "cuda":
            step = batch_size
        else:
            step = min(batch_size, self.cpu_chunk)
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            lens = lengths[idx]
            shape = (len(idx), int(lens.max()))
            if self.graphs is not None:
                shape = self.graphs.padded_shape(*shape)
            padded = np.full(shape, self.pad_token_id, dtype=np.int64)  # padded once, here
            for row, i in enumerate(idx):
                padded[row, :lens[row]] = ids[i]
            if self.graphs is not None:
                out[idx] = self.graphs.logits(padded, lens)
                continue
            input_ids = torch.from_numpy(padded).to(self.device)
            mask = (torch.arange(padded.shape[1])[None, :] < torch.from_numpy(lens)[:, None])
            out[idx] = self.model(input_ids=input_ids,
                                  attention_mask=mask.long().to(self.device)).logits.float().cpu().numpy()
        return out

    def logits(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Decision logits for texts, in input order (see logits_from_ids)."""
        return self.logits_from_ids(self.encode(texts), batch_size)

    def raw_logits(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """The model's own logits for texts (no decision bias): what the bias is fitted on."""
        return self.raw_logits_from_ids(self.encode(texts), batch_size)

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> list[Prediction]:
        return self.task.predictions_from_logits(self.logits(texts, batch_size))


def _fast_tokenizer(tokenizer, max_length: int):
    """A private copy of the Rust tokenizer, set to truncate and not pad: encoding through it
    skips the Python wrapper's per-call work (about 10x cheaper for one short text)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(backend.to_str())
    fast.no_padding()
    fast.enable_truncation(max_length)
    return fast
