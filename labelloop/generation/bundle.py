"""The generation model bundle: what `labelloop.modeling`'s bundle is for classification.

A Hugging Face causal-LM directory (LoRA merged into the weights, fp32 safetensors; the
tokenizer with its chat template and pad token) plus `labelloop.json`:

    {"task": {"type": "generation", "name": ...}, "base_model": ..., "init": ...,
     "method": ..., "max_length": ..., "max_prompt_tokens": ..., "max_new_tokens": ...,
     "system_prompt": ..., "dataset": ..., "dataset_digest": ..., "train_rows": ...}

`max_prompt_tokens` / `max_new_tokens` / `system_prompt` are the settings the model was
trained and evaluated with; the service applies the same chat formatting (labelloop.generation.chat).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labelloop import modeling
from labelloop.generation import chat
from labelloop.modeling import ModelError, read_bundle_meta
from labelloop.tasks import GenerationTask, task_from_dict


def save_generation_bundle(model, tokenizer, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write a bundle (a PEFT model is merged first); `meta["task"]` must be a generation task."""
    if (meta.get("task") or {}).get("type") != "generation":
        raise ValueError("a generation bundle needs meta['task'] of type generation")
    chat.ensure_chat_template(tokenizer)
    return modeling.save_bundle(model, tokenizer, Path(out_dir), meta)


@dataclass
class LoadedGenerator:
    """A bundle loaded for inference: model (eval mode, on `device`), tokenizer (left padding,
    for batched generation), the task and the bundle's metadata."""

    model: Any
    tokenizer: Any
    task: GenerationTask
    meta: dict[str, Any]
    device: torch.device

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.meta.get("max_prompt_tokens", 256))

    @property
    def system_prompt(self):
        return self.meta.get("system_prompt")


def load_generation_tokenizer(bundle_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """A generation bundle's tokenizer (chat template ensured, left padding) and metadata,
    without the model (an API process whose engine runs elsewhere: labelloop.engine_process)."""
    bundle_dir = Path(bundle_dir)
    meta = read_bundle_meta(bundle_dir)
    task = task_from_dict(meta.get("task") or {})
    if not isinstance(task, GenerationTask):
        raise ModelError(f"{bundle_dir} holds a {task.type} model, not a generation model")
    tokenizer = modeling.load_tokenizer(str(bundle_dir))
    chat.ensure_chat_template(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer, meta


def load_generation_bundle(bundle_dir: str | Path, device: str = "auto",
                           dtype: torch.dtype | None = None) -> LoadedGenerator:
    """Load a generation bundle (bf16 on a GPU, fp32 on a CPU unless `dtype` says otherwise)."""
    from transformers import AutoModelForCausalLM

    tokenizer, meta = load_generation_tokenizer(bundle_dir)
    task = task_from_dict(meta["task"])
    dev = modeling.pick_device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(bundle_dir), dtype=dtype).to(dev).eval()
    return LoadedGenerator(model=model, tokenizer=tokenizer, task=task, meta=meta, device=dev)
