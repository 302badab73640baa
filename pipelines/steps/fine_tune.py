"""Step: fine-tune the base model (LoRA or full) and hand on a self-contained model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import mlflow
import pandas as pd
from zenml import step

from labelloop import data, decision, distributed, modeling, provenance, scratch, training
from labelloop.tasks import task_from_settings
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for


@step(experiment_tracker=TRACKER_NAME)
def fine_tune(
    train: pd.DataFrame,
    test: pd.DataFrame,
    validation: pd.DataFrame,
    data_provenance: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> Annotated[Path, "model_bundle"]:
    settings = settings_for(config, overrides)
    task = task_from_settings(settings)
    if task.type == "generation":
        return _fine_tune_generation(settings, train, data_provenance)
    cfg = training.resolve(settings.training, len(train))  # `auto` values for this many rows
    schedule = training.plan(cfg, len(train))
    weights = training.class_weights(cfg.class_weights, list(train["label"]), task)
    mlflow.log_params({
        "base_model": settings.model.base, "method": cfg.method,
        "epochs": round(schedule.epochs(len(train)), 3), "steps": schedule.steps,
        "max_steps": cfg.max_steps, "learning_rate": cfg.learning_rate,
        "batch_size": schedule.batch_size, "max_length": settings.model.max_length,
        "lora_r": cfg.lora.r if cfg.method == "lora" else None, "train_rows": len(train),
        "dataset": settings.dataset.path, "labels": ",".join(task.labels),
        "class_weights": "off" if weights is None else
        ",".join(f"{lab}={w:.3f}" for lab, w in weights.items()),
        "truncation": settings.model.truncation,
        "source_digest": data_provenance["source_digest"],
        "num_processes": cfg.num_processes, "validation_rows": len(validation),
        "label_smoothing": cfg.label_smoothing,
        "weight_column": settings.dataset.weight_column, "min_weight": settings.dataset.min_weight,
        "missing_weight": settings.dataset.missing_weight, "decision_bias": cfg.decision_bias,
        **({"keep_best": cfg.keep_best, "early_stopping_patience": cfg.early_stopping_patience}
           if len(validation) else {}),
    })
    provenance.log_inputs(data_provenance, train, test)

    def log(step_no: int, values: dict[str, float]) -> None:
        mlflow.log_metrics(values, step=step_no)

    result = distributed.fine_tune(train, task, settings.model, cfg, on_log=log,
                                   validation=validation)
    # model.pooling as it resolved (auto: from the base), recorded in the model's config too
    mlflow.log_param("pooling", getattr(result.model.config, modeling.POOLING_KEY, "cls"))
    mlflow.log_metrics({
        "train_seconds": result.train_seconds,
        "train_samples_per_second": result.samples_per_second,
        **({"kept_step": result.kept_step} if result.kept_step is not None else {}),
    })
    # Under the data dir, named after this process: a killed run's copy is removed by the next.
    out = scratch.make(settings, "bundle") / "bundle"
    modeling.save_bundle(result.model, result.tokenizer, out, {
        "task": task.to_dict(),
        "base_model": settings.model.base,
        "max_length": settings.model.max_length,
        "method": cfg.method,
        "init": settings.model.init,
        "dataset": settings.dataset.path,
        **({"validation": {"rows": len(validation), "kept_step": result.kept_step,
                           "curve": result.validation_curve}} if result.validation_curve else {}),
        **({"sample_weights": sample_weights(settings.dataset, train)}
           if settings.dataset.weight_column else {}),
        **data_provenance,  # sources, digests, cleaning, truncation (labelloop.provenance)
    })
    if cfg.decision_bias != "off":  # offsets fitted on the validation rows, into the bundle
        bias = decision.fit_for_bundle(out, validation, cfg.decision_bias,
                                       device=settings.training.device,
                                       batch_size=settings.evaluation.batch_size)
        mlflow.log_params({f"decision_bias_{lab}": round(v, 4)
                           for lab, v in bias["offsets"].items()})
        mlflow.log_metrics({"decision_bias_validation_macro_f1_before":
                            bias["validation_macro_f1_before"],
                            "decision_bias_validation_macro_f1": bias["validation_macro_f1"]})
        print(f"decision bias: {decision.describe(bias)}")
    print(f"fine-tune: {result.steps} steps, {result.samples_per_second:.1f} samples/s, "
          f"{result.train_seconds:.1f}s, final loss {result.final_loss:.4f}")
    if result.validation_curve:
        best = result.best_validation
        print(f"fine-tune: validation macro-F1 on {len(validation)} rows: "
              + ", ".join(f"{e['macro_f1']:.4f}@{e['step']}" for e in result.validation_curve)
              + f"; kept the weights of step {result.kept_step} (best {best['macro_f1']:.4f}"
              f" at step {best['step']})")
    return out


def sample_weights(dataset, train: pd.DataFrame) -> dict:
    """What the bundle records about its per-row loss weights (dataset.weight_column)."""
    w = train[data.WEIGHT] if data.WEIGHT in train else pd.Series([1.0] * len(train))
    return {"column": dataset.weight_column, "min_weight": dataset.min_weight,
            "missing_weight": dataset.missing_weight,
            "rows": int(len(train)), "mean": round(float(w.mean()), 6) if len(w) else None,
            "min": float(w.min()) if len(w) else None, "max": float(w.max()) if len(w) else None}


def _fine_tune_generation(settings, train: pd.DataFrame, provenance: dict) -> Path:
    from labelloop.generation import steps as generation
    from labelloop.generation.training import resolve

    cfg = resolve(settings.training)  # the family's `auto` method and learning rate
    settings = settings.model_copy(update={"training": cfg})
    mlflow.log_params({
        "task_type": "generation", "base_model": settings.model.base, "init": settings.model.init,
        "method": cfg.method, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size,
        "max_length": settings.model.max_length,
        "max_prompt_tokens": settings.generation.max_prompt_tokens,
        "lora_r": cfg.lora.r if cfg.method == "lora" else None, "train_rows": len(train),
        "dataset": generation.dataset_uri(settings, provenance)[:500],
    })
    out, result = generation.train_bundle(
        settings, train, on_log=lambda step_no, values: mlflow.log_metrics(values, step=step_no),
        provenance=provenance)
    mlflow.log_metrics({"train_seconds": result.train_seconds,
                        "train_samples_per_second": result.samples_per_second,
                        "final_train_loss": result.final_loss})
    print(f"fine-tune (SFT, {cfg.method}, init {settings.model.init}): {result.steps} steps, "
          f"{result.samples_per_second:.1f} samples/s, {result.train_seconds:.1f}s, "
          f"final loss {result.final_loss:.4f}")
    return out
