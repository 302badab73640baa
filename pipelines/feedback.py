"""ZenML pipeline `feedback`: the continual loop.

    sync_annotations -> evaluate_fresh -> decide_retrain -> retrain_if_needed
                     -> reload_service -> push_predictions

1. sync: Label Studio's annotations (created, updated, deleted) into the labels store;
2. score the champion on fresh human labels it was not trained on;
3. decide (FeedbackSettings; decision and reason printed and logged to MLflow);
4. if retraining: the `training` pipeline on base data + all human labels, which promotes the
   challenger only if it beats the champion on the same frozen test split;
5. tell the running service to reload (it also polls the registry);
6. give the project's unannotated tasks the champion's predictions.

Never two at once for one project: `run_feedback_pipeline` holds
`labelloop.trigger.feedback_lock(settings, project)` for the whole run.

Triggers: `labelloop feedback` (CLI), Label Studio's "Start training" button and the webhook
label threshold (both via labelloop.trigger), and a schedule:
- the local orchestrator runs no schedules: use cron, e.g. daily at 03:00
  `0 3 * * * cd /path/to/labelloop && .venv/bin/labelloop feedback >> .labelloop/feedback-cron.log 2>&1`
- on a stack whose orchestrator supports schedules:
  `python -m pipelines.feedback schedule --cron "0 3 * * *"`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import labelloop  # noqa: F401  (telemetry off before zenml is imported)
from zenml import pipeline
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
    MLFlowExperimentTrackerSettings,
)

from labelloop.settings import Settings, load_settings
from pipelines.steps.feedback_decide import decide_retrain
from pipelines.steps.feedback_evaluate import evaluate_fresh
from pipelines.steps.feedback_publish import push_predictions, reload_service
from pipelines.steps.feedback_retrain import retrain_if_needed
from pipelines.steps.feedback_sync import sync_annotations


def pipeline_options(settings: Settings) -> dict[str, Any]:
    return {"settings": {"experiment_tracker": MLFlowExperimentTrackerSettings(
        experiment_name=settings.registry.experiment)}}


@pipeline(enable_cache=False)
def feedback(config: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
             project: Optional[int] = None, reason: str = "cli") -> None:
    report = sync_annotations(config, overrides, project)
    fresh = evaluate_fresh(report, config, overrides)
    decision = decide_retrain(fresh, config, overrides, reason, project)
    result = retrain_if_needed(decision, config, overrides, project)
    reloaded = reload_service(result, config, overrides)
    push_predictions(reloaded, config, overrides, project)


def resolve_project(settings: Settings, project: Optional[int]) -> Optional[int]:
    """The project id: as given, else the one titled `studio.project_title` (None if LS is down)."""
    if project is not None:
        return int(project)
    try:
        from annotation.labelstudio import StudioConnectionError, connect, find_project
    except ImportError:
        return None
    try:
        found = find_project(connect(settings, timeout=10.0), settings.studio.project_title)
    except StudioConnectionError as exc:
        print(f"note: {exc}")
        return None
    return int(found.id) if found is not None else None


def _output(run, step: str, name: str) -> Any:
    return run.steps[step].outputs[name][0].load()


def run_feedback_pipeline(config: Optional[str] = None, project: Optional[int] = None,
                          reason: str = "cli", overrides: Optional[dict[str, Any]] = None) -> int:
    """One turn of the loop for a project; 0 on success, 3 if one is already running."""
    from labelloop.trigger import FeedbackRunning, feedback_lock
    from pipelines.stack import ensure_stack

    settings = load_settings(config, overrides=overrides)
    project = resolve_project(settings, project)
    try:
        with feedback_lock(settings, project, reason):
            ensure_stack(settings)
            run = feedback.with_options(**pipeline_options(settings))(
                config=str(config) if config else None, overrides=overrides,
                project=project, reason=reason)
    except FeedbackRunning as exc:
        print(f"labelloop feedback: {exc}", file=sys.stderr)
        return 3
    decision = _output(run, "decide_retrain", "retrain_decision")
    result = _output(run, "retrain_if_needed", "retrain_result")
    pushed = _output(run, "push_predictions", "push_result")
    print("\n=== labelloop feedback result ===")
    print(f"trigger        {reason} (project {project if project is not None else '-'})")
    print(f"decision       {'retrain' if decision['retrain'] else 'keep'}: {decision['reason']}")
    if result.get("retrained"):
        print(f"new version    {result['version']}: "
              f"{'promoted to champion' if result['promoted'] else 'not promoted'} "
              f"({result['promotion_reason']})")
    print(f"predictions    {pushed.get('pushed', 0)} pending task(s) updated"
          + (f" to version {pushed['model_version']}" if pushed.get("model_version") else ""))
    return 0


def schedule(config: Optional[str], cron: str, project: Optional[int] = None) -> int:
    """Schedule the pipeline on orchestrators that support schedules; explain otherwise."""
    from zenml.client import Client
    from zenml.config.schedule import Schedule

    from pipelines.stack import ensure_stack

    settings = load_settings(config)
    ensure_stack(settings)
    orchestrator = Client().active_stack.orchestrator
    if not orchestrator.config.is_schedulable:
        print(f"labelloop feedback: the active ZenML orchestrator {orchestrator.name!r} "
              f"({orchestrator.flavor}) runs no schedules. Use cron instead, e.g. daily at 03:00:\n"
              f"  0 3 * * * cd {Path(__file__).resolve().parents[1]} && .venv/bin/labelloop feedback"
              f"{' --config ' + config if config else ''} >> feedback-cron.log 2>&1",
              file=sys.stderr)
        return 2
    project = resolve_project(settings, project)
    # A scheduled run has no process around it to hold the lock: the orchestrator's own
    # concurrency settings must keep it to one at a time.
    feedback.with_options(schedule=Schedule(cron_expression=cron), **pipeline_options(settings))(
        config=str(config) if config else None, overrides=None, project=project,
        reason=f"schedule {cron}")
    print(f"scheduled the feedback pipeline: {cron!r} on {orchestrator.name}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.feedback", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="one turn of the loop (same as `labelloop feedback`)")
    r.add_argument("--config")
    r.add_argument("--project", type=int)
    r.add_argument("--reason", default="cli")
    s = sub.add_parser("schedule", help="schedule the pipeline (orchestrators with schedules)")
    s.add_argument("--config")
    s.add_argument("--project", type=int)
    s.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *"')
    t = sub.add_parser("retrain", help="internal: the training pipeline with human labels")
    t.add_argument("--config", required=True)
    t.add_argument("--labels-seq", type=int, required=True)
    t.add_argument("--result", required=True)
    args = p.parse_args(argv)
    if args.action == "run":
        return run_feedback_pipeline(args.config, args.project, args.reason)
    if args.action == "schedule":
        return schedule(args.config, args.cron, args.project)
    from pipelines.steps.feedback_retrain import run_training_with_labels

    result = run_training_with_labels(args.config, args.labels_seq)
    with open(args.result, "w") as f:
        json.dump(result, f, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
