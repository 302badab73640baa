"""ZenML pipeline `feedback`: the continual loop. One turn:

    sync_annotations -> evaluate_fresh -> decide_retrain -> retrain_if_needed
                     -> reload_service -> push_predictions

1. sync: the answers of every annotation tool that is on (`annotation.tools`: Label Studio,
   Argilla; created, updated, deleted) into the one labels store;
2. score the champion on held-out human labels, against what its own confidence expects;
3. decide (FeedbackSettings; decision, reason and estimate printed and logged to MLflow);
4. if retraining: a challenger trained in this process (a warm start from the champion or a
   full retrain, `feedback.train_rule`), registered, and promoted only if the paired test on the
   frozen split and the human labels say it is better (labelloop.challenger);
5. tell the running service to reload (it also polls the registry);
6. give every tool's unannotated items the champion's predictions.

Each turn is one ZenML run and one MLflow run, both named `feedback-turn-<n>-...`, with the
training nested under it as `training v<version> (<rule>)`. Its stage, progress and outcome go
to labelloop.loop_status, which the service's status page (/status) and Label Studio show.

Never two at once for one project: `run_feedback_pipeline` holds
`labelloop.trigger.feedback_lock(settings, project)` for the whole run.

Triggers: `labelloop feedback` (CLI; `--train` asks for training as the button does), Label
Studio's "Start training" button and the webhook label threshold (both via labelloop.trigger),
and a schedule:
- the local orchestrator runs no schedules: use cron, e.g. daily at 03:00
  `0 3 * * * cd /path/to/labelloop && .venv/bin/labelloop feedback >> .labelloop/feedback-cron.log 2>&1`
- on a stack whose orchestrator supports schedules:
  `python -m pipelines.feedback schedule --cron "0 3 * * *"`.
"""

from __future__ import annotations

import argparse
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
    from pipelines.stack import run_options  # steps in containers: image, env (stack.name)

    return run_options(settings, {"settings": {"experiment_tracker":
                                               MLFlowExperimentTrackerSettings(
                                                   experiment_name=settings.registry.experiment)}})


@pipeline(enable_cache=False)
def feedback(config: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
             project: Optional[int] = None, reason: str = "cli",
             turn: Optional[int] = None) -> None:
    report = sync_annotations(config, overrides, project, turn)
    fresh = evaluate_fresh(report, config, overrides, project, turn)
    decision = decide_retrain(fresh, config, overrides, reason, project, turn)
    result = retrain_if_needed(decision, config, overrides, project, turn)
    reloaded = reload_service(result, config, overrides, turn)
    push_predictions(reloaded, config, overrides, project, turn)


def resolve_project(settings: Settings, project: Optional[int]) -> Optional[int]:
    """The project id: as given, else the one titled `studio.project_title` (None if LS is down)."""
    if project is not None:
        return int(project)
    from annotation.tools import is_enabled

    if not is_enabled(settings, "label-studio"):
        return None
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


def outcome_of(decision: dict, result: dict) -> tuple[str, str]:
    """(outcome, one readable line) of a finished turn."""
    if not result.get("retrained"):
        return "no-retrain", decision["reason"]
    verb = "promoted" if result["promoted"] else "kept"
    how = result.get("rule_label") or f"{result['rule']} start"  # generation: SFT (+ DPO)
    head = (f"v{result['version']} ({how}) promoted to champion"
            if result["promoted"] else
            f"v{result['version']} ({how}) not promoted, "
            f"v{result.get('champion_before')} stays champion")
    return verb, f"{head}: {result['promotion_reason']}"


def run_feedback_pipeline(config: Optional[str] = None, project: Optional[int] = None,
                          reason: str = "cli", overrides: Optional[dict[str, Any]] = None) -> int:
    """One turn of the loop for a project; 0 on success, 3 if one is already running."""
    import time

    from labelloop import loop_status
    from labelloop.trigger import FeedbackRunning, feedback_lock
    from pipelines.interrupted import mark_interrupted_runs, pid_tags
    from pipelines.stack import ensure_stack
    from pipelines.steps.feedback_publish import tell_all as tell_annotators

    from labelloop.challenger import preflight

    settings = load_settings(config, overrides=overrides)
    project = resolve_project(settings, project)
    started = time.perf_counter()
    try:
        with feedback_lock(settings, project, reason):
            turn = loop_status.start_turn(settings, project, reason)
            tell_annotators(settings, project, f"Training run {turn} started ({reason}).")
            try:
                # Bad data, or a warm start the champion cannot give: before any work.
                preflight(settings)
                ensure_stack(settings)
                for name in mark_interrupted_runs():
                    print(f"marked the interrupted ZenML run {name} as failed (its process is gone)")
                run = feedback.with_options(
                    run_name=f"feedback-turn-{turn}-{{date}}-{{time}}", tags=pid_tags(),
                    **pipeline_options(settings))(
                    config=str(config) if config else None, overrides=overrides,
                    project=project, reason=reason, turn=turn)
                decision = _output(run, "decide_retrain", "retrain_decision")
                result = _output(run, "retrain_if_needed", "retrain_result")
                pushed = _output(run, "push_predictions", "push_result")
            except BaseException as exc:
                line = f"failed: {type(exc).__name__}: {str(exc)[:300]}; the champion is unchanged"
                loop_status.finish_turn(settings, turn, "failed", line, failed=True)
                tell_annotators(settings, project, f"Training run {turn} {line}.")
                raise
            outcome, line = outcome_of(decision, result)
            seconds = time.perf_counter() - started
            loop_status.finish_turn(settings, turn, outcome, line, details={
                "decision": decision, "result": {k: v for k, v in result.items()
                                                 if k != "decision"},
                "promotion": result.get("decision"), "pushed": pushed.get("pushed", 0),
                "seconds": seconds})
            tell_annotators(settings, project, f"Training run {turn} ended after {seconds:.0f} s: "
                                               f"{line}")
    except FeedbackRunning as exc:
        print(f"labelloop feedback: {exc}", file=sys.stderr)
        return 3
    print("\n=== labelloop feedback result ===")
    print(f"turn           {turn} ({seconds:.1f} s; trigger {reason}, project "
          f"{project if project is not None else '-'})")
    print(f"decision       {'retrain' if decision['retrain'] else 'keep'}: {decision['reason']}")
    print(f"               {decision.get('estimate', '')}")
    if result.get("retrained"):
        print(f"training       {result.get('rule_label') or result['rule'] + ' start'} "
              f"({result['rule_reason']}), "
              f"{result['train_rows']} rows, {result['timings'].get('train_s', 0):.1f} s")
        print(f"new version    {result['version']}: "
              f"{'promoted to champion' if result['promoted'] else 'not promoted'}")
        print(f"               {result['promotion_reason']}")
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
    args = p.parse_args(argv)
    if args.action == "run":
        return run_feedback_pipeline(args.config, args.project, args.reason)
    return schedule(args.config, args.cron, args.project)


if __name__ == "__main__":
    raise SystemExit(main())
