"""Feedback step 4: when the decision says so, run the `training` pipeline on the base data plus
all human labels (`include_human_labels=True`: human labels win for the same text, test-split
texts are never trained on), which registers a challenger and promotes it only if it beats the
champion on the frozen test split.

The training pipeline runs as its own ZenML run in a child process (`python -m pipelines.feedback
retrain ...`): a pipeline run inside a running step is not something ZenML supports, and a child
keeps this step's memory small. The child tags the new version with the labels-store sequence
number its data was read at (`labelloop.labels_seq`), which is what later runs call "seen".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import Settings
from pipelines.steps.common import settings_for
from pipelines.steps.feedback_evaluate import LABELS_SEQ_TAG

REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_snapshot(settings: Settings, path: Path) -> Path:
    """The exact settings as a YAML file the child reads (0600: it may hold secrets)."""
    import yaml

    data = settings.model_dump(mode="json")
    data["data_dir"] = str(settings.data_path)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def retrain_in_child(settings: Settings, project: Optional[int] = None) -> dict[str, Any]:
    """Run `training` with human labels in a child process; returns its result dict."""
    from labelloop import labels_store

    with labels_store.open_store(settings) as store:
        seq = store.current_seq()  # labels up to here are what the challenger trains on
    workdir = settings.data_path / "feedback"
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cfg = settings_snapshot(settings, Path(tmp) / "settings.yaml")
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "pipelines.feedback", "retrain", "--config", str(cfg),
               "--labels-seq", str(seq), "--result", str(result_path)]
        env = dict(os.environ)
        env.pop("LABELLOOP_CONFIG", None)
        for key in [k for k in env if k.startswith("LABELLOOP__")]:
            env.pop(key)  # the snapshot already holds every setting
        code = subprocess.call(cmd, cwd=str(REPO_ROOT), env=env)
        if code != 0 or not result_path.is_file():
            raise RuntimeError(f"the training pipeline failed (exit code {code}); the champion "
                               "is unchanged")
        result = json.loads(result_path.read_text())
    with labels_store.open_store(settings) as store:
        store.mark_feedback_run(None, "retrain", seq)
        if project is not None:
            store.mark_feedback_run(project, "retrain", seq)
    result["labels_seq"] = seq
    return result


def run_training_with_labels(config: str, labels_seq: int) -> dict[str, Any]:
    """In the child: the training pipeline with human labels; tag the challenger; return outputs."""
    from labelloop import registry
    from labelloop.settings import load_settings
    from pipelines.run import _step_output, validate_inputs
    from pipelines.stack import ensure_stack
    from pipelines.training import pipeline_options, training

    settings = load_settings(config)
    validate_inputs(settings)
    ensure_stack(settings)
    registry.cleanup_pending(settings)
    run = training.with_options(**pipeline_options(settings.registry))(
        config=config, overrides=None, include_human_labels=True,
        human_labels_max_seq=labels_seq)
    metrics = _step_output(run, "evaluate_model", "metrics")
    decision = _step_output(run, "promote_model", "promotion_decision")
    version = str(decision["challenger_version"])
    registry.client(settings).set_model_version_tag(
        settings.registry.model_name, version, LABELS_SEQ_TAG, str(labels_seq))
    return {"version": version, "promoted": bool(decision["promote"]),
            "promotion_reason": decision["reason"], "metrics": metrics,
            "champion_before": decision.get("champion_version"), "pipeline_run": str(run.id)}


@step(enable_cache=False)
def retrain_if_needed(
    retrain_decision: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    project: Optional[int] = None,
) -> Annotated[dict, "retrain_result"]:
    if not retrain_decision.get("retrain"):
        print("retrain: not needed")
        return {"retrained": False}
    settings = settings_for(config, overrides)
    result = retrain_in_child(settings, project)
    print(f"retrain: version {result['version']} "
          f"{'PROMOTED to champion' if result['promoted'] else 'not promoted'} - "
          f"{result['promotion_reason']}")
    return {"retrained": True, **result}
