"""The real `feedback` pipeline (real ZenML and MLflow stores, a child training pipeline) without
Label Studio: sync is skipped with a note, labels come from the store as the webhook writes them.
The loop with the real Label Studio and service is tests/integration/test_loop_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop import labels_store, registry
from labelloop.labels_store import LabelRecord
from labelloop.settings import load_settings
from tests.helpers import free_port, register_untrained_version, small_corpus_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    env, corpus = small_corpus_env(
        root, rows=300, seed=3,
        LABELLOOP__TRAINING__MAX_STEPS="3",
        LABELLOOP__EVALUATION__SAMPLE_PREDICTIONS="3",
        LABELLOOP__STUDIO__PORT=str(free_port()),  # nothing listens: sync is skipped
        LABELLOOP__STUDIO__API_TOKEN="x" * 40,
        LABELLOOP__SERVING__PORT=str(free_port()),
        LABELLOOP__SERVING__ADMIN_TOKEN="admin-token-for-tests",
        LABELLOOP__FEEDBACK__MIN_NEW_LABELS="4",
        LABELLOOP__FEEDBACK__MIN_FRESH_SCORE="0",
        LABELLOOP__FEEDBACK__MAX_DROP="1",
    )
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("LABELLOOP")})
    old = os.environ.copy()
    os.environ.update({k: v for k, v in env.items() if k.startswith(("LABELLOOP", "ZENML"))})
    try:
        register_untrained_version(settings, seed=0)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return root, env, settings, corpus


def feedback(env, *args):
    return subprocess.run([sys.executable, "-m", "labelloop.cli", "feedback", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def add_labels(settings, rows, start_id):
    with labels_store.open_store(settings) as store:
        store.upsert_many([
            LabelRecord(source="label_studio", project="1", annotation_id=str(start_id + i),
                        text=text, label=label, updated_at=float(start_id + i),
                        model_version="1", shown_label="neutral")
            for i, (text, label) in enumerate(rows)])


def test_retrains_on_enough_new_labels_then_keeps(workspace):
    root, env, settings, corpus = workspace
    texts = corpus["text"].tolist()
    add_labels(settings, [(texts[0], "positive"), (texts[1], "negative"), (texts[2], "neutral"),
                          (texts[3], "positive")], start_id=100)
    r = feedback(env, "--project", "1", "--reason", "test")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    print(r.stdout[-3000:])
    assert "sync: skipped" in out
    assert "decision       retrain" in out and "4 new human labels since the last retrain" in out
    versions = {str(mv.version): mv for mv in registry.list_versions(settings)}
    assert set(versions) == {"1", "2"}
    assert versions["2"].tags.get("labelloop.labels_seq") == "4"
    champion = str(registry.get_champion(settings).version)
    assert ("promoted to champion" in out) == (champion == "2")
    # The decision is in MLflow with its reason.
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[settings.registry.experiment],
                              filter_string="tags.`labelloop.kind` = 'feedback'")
    assert len(runs) == 1 and runs.iloc[0]["params.decision"] == "retrain"
    # The service is not running: not an error, the run says the service polls.
    assert "does not answer" in out

    # Nothing new: the next run keeps the champion and trains nothing.
    r = feedback(env, "--project", "1")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "decision       keep" in r.stdout
    assert len(registry.list_versions(settings)) == 2


def test_never_two_runs_at_once_for_a_project(workspace):
    root, env, settings, corpus = workspace
    from labelloop.trigger import feedback_lock

    with feedback_lock(settings, 1, "test holds it"):
        r = feedback(env, "--project", "1")
    assert r.returncode == 3 and "already running" in r.stderr
    assert len(registry.list_versions(settings)) == 2
