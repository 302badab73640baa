"""Test helpers shared by unit and integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import torch

from labelloop import modeling
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, its workers included."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def register_untrained_version(settings: Settings, seed: int = 0, champion: bool = True) -> str:
    """Register the base MiniLM with a seeded random head as a ready version (no training).

    Fast (a few seconds), real registry entries: enough for serving and annotation tests that
    need *a* model and can tell versions apart by their outputs.
    """
    import mlflow  # here, not at the top: the serving benchmark imports this module on
    from labelloop import registry  # machines that have no MLflow (--bundle runs)

    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    torch.manual_seed(seed)
    model = modeling.load_base_classifier(base, task)
    tokenizer = modeling.load_tokenizer(base)
    with tempfile.TemporaryDirectory() as tmp:
        modeling.save_bundle(model, tokenizer, Path(tmp) / "bundle", {
            "task": task.to_dict(), "max_length": settings.model.max_length,
            "base_model": settings.model.base, "dataset_digest": f"untrained-seed-{seed}",
            "method": "none",
        })
        experiment_id = registry.ensure_experiment(settings)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"untrained-{seed}") as run:
            mlflow.log_artifacts(str(Path(tmp) / "bundle"), registry.BUNDLE_ARTIFACT_PATH)
    mv = registry.register_bundle(settings, run.info.run_id)
    if champion:
        registry.set_champion(settings, mv.version)
    return str(mv.version)


def small_corpus_env(root: Path, rows: int, seed: int, **settings_env: str) -> tuple[dict, object]:
    """A workspace for pipeline tests: `rows` tweets of the default corpus in `root/small.csv`,
    a private ZenML store and data dir, tiny training, plus any LABELLOOP__ overrides given.
    Returns (environment for subprocesses, the full corpus frame)."""
    import os

    import pandas as pd

    from labelloop.settings import load_settings, resolve_path

    corpus = pd.read_csv(resolve_path(load_settings(environ={}).dataset.path), encoding="latin-1")
    corpus.sample(rows, random_state=seed)[["sentiment", "text"]].to_csv(root / "small.csv",
                                                                         index=False)
    env = {
        **os.environ,
        "ZENML_CONFIG_PATH": str(root / "zenml"),
        "LABELLOOP__DATA_DIR": str(root / "data"),
        "LABELLOOP__DATASET__PATH": str(root / "small.csv"),
        "LABELLOOP__DATASET__ENCODING": "utf-8",
        "LABELLOOP__TRAINING__BATCH_SIZE": "16",
        "LABELLOOP__TRAINING__MIN_STEPS": "0",  # tiny training: no small-data floor of steps
        "LABELLOOP__MODEL__MAX_LENGTH": "32",
        "PYTHONUNBUFFERED": "1",
        **settings_env,
    }
    return env, corpus
