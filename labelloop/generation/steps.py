"""What the ZenML pipeline steps do for the generation family (pipelines/steps/* dispatch here
on `task.type`, so the `training` pipeline stays one pipeline for both families).

Each function is one step's work: `check_inputs` (before anything runs), `load` (rows and the
frozen split), `train_bundle` (SFT, then the bundle), `evaluate` (fine-tuned and base on the
test split), `registry_tags`; promotion is labelloop.generation.promotion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from labelloop import scratch
from labelloop.generation import base, bundle, data, evaluation, training
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings


def check_inputs(settings: Settings) -> str:
    """Data, then the base model (converted once if it is a GGUF file), or one clear error:
    a data problem is named before the base's conversion, which takes a while the first time."""
    data.load_splits(settings.dataset)
    return base.resolve_causal_base(settings.model.base, base.cache_root(settings))


def load(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Training and test pairs, and what the run records of them: the sources with their
    content digests (as the classifier's provenance), the split's digests and the `data:`
    lines that say what each source gave."""
    splits = data.load_splits(settings.dataset)
    train, test = splits.train, splits.test
    meta = {"train_rows": len(train), "test_rows": len(test), "train_digest": data.digest(train),
            "test_digest": data.digest(test), "test_prompts": int(test["prompt"].nunique()),
            "sources": [s.to_dict() for s in splits.sources],
            "source_digest": splits.source_digest, "test_from_source": splits.test_from_source,
            "summary": splits.summary_lines()}
    return train, test, meta


def dataset_uri(settings: Settings, provenance: Optional[dict]) -> str:
    """Where the training data came from, in words: the sources `load` read."""
    return ", ".join(src["uri"] for src in (provenance or {}).get("sources", [])) \
        or str(settings.dataset.path)


def train_bundle(settings: Settings, train: pd.DataFrame,
                 on_log: Optional[Callable[[int, dict], None]] = None,
                 provenance: Optional[dict] = None) -> tuple[Path, training.SFTResult]:
    """SFT, then the bundle; `provenance` (what `load` recorded) adds the sources it read.
    `settings.training` as the caller resolved it (training.resolve) is what the bundle records."""
    result = training.fine_tune(train, settings, on_log=on_log)
    out = scratch.make(settings, "bundle") / "bundle"
    g = settings.generation
    bundle.save_generation_bundle(result.model, result.tokenizer, out, {
        "task": task_from_settings(settings).to_dict(),
        "base_model": settings.model.base, "base_dir": result.base_dir,
        "init": settings.model.init, "method": settings.training.method,
        "max_length": settings.model.max_length, "max_prompt_tokens": g.max_prompt_tokens,
        "max_new_tokens": g.max_new_tokens, "system_prompt": g.system_prompt,
        "dataset": dataset_uri(settings, provenance), "dataset_digest": data.digest(train),
        "train_rows": len(train),
        **{key: provenance[key] for key in ("sources", "source_digest", "test_digest")
           if provenance and provenance.get(key) is not None},
    })
    return out, result


def evaluate(settings: Settings, bundle_dir: Path, test: pd.DataFrame) -> evaluation.GenEvalResult:
    """The bundle and its base model, scored the same way on the same rows."""
    from transformers import AutoModelForCausalLM

    mine = bundle.load_generation_bundle(bundle_dir, device=settings.training.device)
    base_dir = base.resolve_causal_base(settings.model.base, base.cache_root(settings), quiet=True)
    base_model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=mine.model.dtype).to(mine.device).eval()
    base_tok = base.load_tokenizer(base_dir)
    base_tok.padding_side = "left"
    return evaluation.evaluate_with_base(mine.model, mine.tokenizer, base_model, base_tok, test,
                                         settings)


def registry_tags(meta: dict, metrics: dict, settings: Settings) -> dict[str, str]:
    tags = {"init": str(meta.get("init", "pretrained"))}
    for name in task_from_settings(settings).promotion_metrics:
        tags[f"base_{name}"] = repr(float(metrics[f"base_{name}"]))
        tags[f"gain_{name}"] = repr(float(metrics[f"gain_{name}"]))
    return tags
