"""Thin runners behind the CLI: validate up front, run a pipeline, print what came out."""

from __future__ import annotations

import json
from typing import Any, Optional

import labelloop  # noqa: F401
from labelloop import data, distributed, registry
from labelloop.modeling import resolve_base_model
from labelloop.settings import Settings, load_settings
from labelloop.tasks import task_from_settings


def validate_inputs(settings: Settings) -> None:
    """Fail fast, with one clear message, on anything that would break training later."""
    if settings.task.type == "generation":
        from labelloop.generation.steps import check_inputs

        if settings.training.num_processes > 1:  # not silently one process
            from labelloop.settings import ConfigError

            raise ConfigError("training.num_processes > 1 spreads classification fine-tunes "
                              "only; generation trains in one process: set "
                              "training.num_processes to 1")

        check_inputs(settings)
        return
    resolve_base_model(settings.model.base)
    distributed.check_processes(settings.training)
    data.load_splits(settings.dataset, task_from_settings(settings))


def _step_output(run, step: str, name: str) -> Any:
    return run.steps[step].outputs[name][0].load()


def run_training(config: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
                 include_human_labels: bool = False) -> int:
    settings = load_settings(config, overrides=overrides)
    validate_inputs(settings)  # before ZenML and the steps load: a bad input fails in seconds
    from pipelines.interrupted import mark_interrupted_runs, pid_tags
    from pipelines.stack import ensure_stack, run_options
    from pipelines.training import pipeline_options, training

    ensure_stack(settings)
    removed = registry.cleanup_pending(settings)
    if removed:
        print(f"removed unfinished model version(s) left by an interrupted run: {removed}")
    next_version = registry.next_version(settings)
    for name in mark_interrupted_runs():
        print(f"marked the interrupted ZenML run {name} as failed (its process is gone)")
    run = training.with_options(run_name=f"training-v{next_version}-{{date}}-{{time}}",
                                tags=pid_tags(),
                                **run_options(settings, pipeline_options(settings.registry)))(
        config=str(config) if config else None, overrides=overrides,
        include_human_labels=include_human_labels,
    )
    metrics = _step_output(run, "evaluate_model", "metrics")
    decision = _step_output(run, "promote_model", "promotion_decision")
    print_summary(settings, metrics, decision, _step_output(run, "evaluate_model", "baseline"),
                  _step_output(run, "evaluate_model", "decision_bias"))
    return 0


def print_summary(settings: Settings, metrics: dict, decision: dict,
                  baseline: Optional[dict] = None, bias: Optional[dict] = None) -> None:
    print("\n=== labelloop training result ===")
    if settings.task.type == "generation":
        for name in ("chrf", "rouge_l", "loss", "perplexity"):
            print(f"test {name:<10} {metrics[name]:.4f}  (base {metrics[f'base_{name}']:.4f})")
    else:
        _print_classification(settings, metrics, baseline, bias)
    print(f"registered     {settings.registry.model_name} version {decision['challenger_version']}")
    print(f"promotion      {'promoted to champion' if decision['promote'] else 'not promoted'}: "
          f"{decision['reason']}")
    show_status(settings=settings)


def _print_classification(settings: Settings, metrics: dict,
                          baseline: Optional[dict] = None, bias: Optional[dict] = None) -> None:
    if bias:
        from labelloop.decision import describe

        with_them = ("" if bias.get("skipped")
                     else "; the test figures below are with these offsets")
        print(f"decision bias  {describe(bias)}{with_them}")
    print(f"test accuracy  {metrics['accuracy']:.4f}")
    print(f"test macro-F1  {metrics['macro_f1']:.4f}")
    for label in task_from_settings(settings).labels:
        print(f"  F1 {label:<10} {metrics[f'f1_{label}']:.4f}")
    if baseline:
        metric = settings.promotion.metric
        print(f"baseline       {baseline['name']} (same split) macro-F1 {baseline['macro_f1']:.4f}: "
              f"the model {'beats it' if baseline['beats'] else 'does NOT beat it'} on {metric} "
              f"({metrics[metric] - baseline[metric]:+.4f})")


def show_status(config: Optional[str] = None, settings: Optional[Settings] = None) -> int:
    settings = settings or load_settings(config)
    champion = registry.get_champion(settings)
    print(f"registry       {settings.tracking_uri}")
    versions = registry.list_versions(settings)
    if not versions:
        print("  no model versions yet: run `labelloop train`")
        return 0
    for mv in versions:
        mark = f"  <- {settings.registry.champion_alias}" if champion and champion.version == mv.version else ""
        recorded = mv.tags.get(f"test_{settings.promotion.metric}")
        metric = f"{float(recorded):.4f}" if recorded else "?"
        print(f"  version {mv.version:>3}  {mv.tags.get(registry.STATUS_TAG, '?'):<7} "
              f"test {settings.promotion.metric} {metric}{mark}")
        trace = provenance_line(mv.tags)
        if trace:
            print(f"               {trace}")
    return 0


def provenance_line(tags: dict) -> str:
    """What trained a version, from its registry tags (labelloop.provenance)."""
    from labelloop import provenance

    parts = [(name, tags.get(tag)) for name, tag in (
        ("data", provenance.SOURCE_DIGEST_TAG), ("test split", provenance.TEST_DIGEST_TAG),
        ("human labels", provenance.HUMAN_DIGEST_TAG), ("labels seq", provenance.LABELS_SEQ_TAG))]
    return "  ".join(f"{name} {value}" for name, value in parts if value)


def run_feedback(config: Optional[str] = None, project: Optional[int] = None,
                 reason: str = "cli") -> int:
    from pipelines.feedback import run_feedback_pipeline

    return run_feedback_pipeline(config, project=project, reason=reason)


if __name__ == "__main__":
    print(json.dumps({"status": show_status()}))
