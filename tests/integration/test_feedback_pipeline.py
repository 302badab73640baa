"""The real `feedback` pipeline (real ZenML and MLflow stores, training inside the turn) without
Label Studio: sync is skipped with a note, labels come from the store as the webhook writes them.
The loop with the real Label Studio, service and browser is tests/integration/test_loop_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


def test_warm_turn_one_named_run_then_no_retrain_on_identical_data(workspace):
    from labelloop import challenger, loop_status

    root, env, settings, corpus = workspace
    texts = corpus["text"].tolist()
    labels = ["positive", "negative", "neutral", "positive", "negative", "neutral"]
    rows = list(zip(texts[:6], labels))
    add_labels(settings, rows, start_id=100)
    r = feedback(env, "--project", "1", "--reason", "test")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    print(r.stdout[-3000:])
    assert "sync: label-studio: skipped" in out  # Label Studio is down; the run goes on
    assert "decision       retrain" in out and "6 new human labels since the last retrain" in out
    # A champion exists and few labels arrived: a warm start, trained inside the turn.
    assert "training       warm start" in out
    versions = {str(mv.version): mv for mv in registry.list_versions(settings)}
    assert set(versions) == {"1", "2"}
    tags = versions["2"].tags
    assert tags["labelloop.labels_seq"] == "6" and tags["labelloop.train_rule"] == "warm"
    trainable = [t for t, _ in rows if not challenger.is_holdout(t, settings.feedback.holdout_fraction)]
    assert tags["labelloop.human_digest"] == challenger.human_digest(
        pd.DataFrame([(t, lab) for t, lab in rows if t in trainable], columns=["text", "label"]))
    # The promotion line names the paired test and both scores, in the output and in MLflow.
    assert "paired bootstrap 95% interval" in out
    champion = str(registry.get_champion(settings).version)
    assert ("promoted to champion" in out) == (champion == "2")

    # One MLflow run per turn, named after the turn, with the training nested under it.
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[settings.registry.experiment])
    turn_runs = runs[runs["tags.labelloop.kind"] == "feedback"]
    assert len(turn_runs) == 1 and turn_runs.iloc[0]["params.decision"] == "retrain"
    assert turn_runs.iloc[0]["tags.mlflow.runName"].startswith("feedback-turn-1-")
    child = runs[runs["tags.mlflow.parentRunId"] == turn_runs.iloc[0]["run_id"]]
    assert "training v2 (warm)" in set(child["tags.mlflow.runName"])
    assert runs[runs["tags.mlflow.runName"] == "training v2 (warm)"].iloc[0][
        "tags.promotion"].startswith(("promoted", "kept"))

    # The turn is recorded for the status page, with the one-line reason.
    turn = loop_status.turns(settings, limit=1)[0]
    assert turn["state"] == "done" and turn["outcome"] in ("promoted", "kept")
    assert "paired bootstrap" in turn["summary"]

    # The same labels again (forced past the label count): no retrain on identical data.
    r = feedback({**env, "LABELLOOP__FEEDBACK__MIN_NEW_LABELS": "1"}, "--project", "1")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "decision       keep" in r.stdout and "identical to the last retrain's" in r.stdout
    assert len(registry.list_versions(settings)) == 2
    assert loop_status.turns(settings, limit=1)[0]["outcome"] == "no-retrain"


def test_warm_start_from_a_champion_with_other_labels_fails_before_training(workspace):
    root, env, settings, corpus = workspace
    add_labels(settings, [(corpus["text"].tolist()[10], "positive")], start_id=200)
    bad = {**env, "LABELLOOP__TASK__LABELS": "[negative, neutral, positive, mixed]",
           "LABELLOOP__FEEDBACK__FORCE_RETRAIN": "true", "LABELLOOP__FEEDBACK__TRAIN_RULE": "warm"}
    r = feedback(bad, "--project", "1")
    assert r.returncode != 0
    assert "cannot warm-start" in (r.stdout + r.stderr)
    assert len(registry.list_versions(settings)) == 2


def test_never_two_runs_at_once_for_a_project(workspace):
    root, env, settings, corpus = workspace
    from labelloop.trigger import feedback_lock

    with feedback_lock(settings, 1, "test holds it"):
        r = feedback(env, "--project", "1")
    assert r.returncode == 3 and "already running" in r.stderr
    assert len(registry.list_versions(settings)) == 2


def test_turn_forked_from_the_warm_launcher(workspace, monkeypatch):
    """What the service does on "Start training" with feedback.warm_launcher: the real turn
    runs in a child of the warm launcher (imports paid once), adopts the lock, and completes."""
    import time

    from labelloop import launcher, loop_status, trigger
    from labelloop.processes import alive

    root, env, settings, corpus = workspace
    texts = corpus["text"].tolist()
    add_labels(settings, [(t, "negative") for t in texts[20:26]], start_id=300)
    folder = trigger.feedback_dir(settings)
    proc = subprocess.Popen([sys.executable, "-m", "labelloop.launcher", "--dir", str(folder),
                             "--watch-pid", str(os.getpid())], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not launcher.socket_path(folder).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "launcher never ready"
            time.sleep(0.2)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(REPO)
        before = len(registry.list_versions(settings))
        assert trigger.request_feedback_run(settings, 1, "test: warm launcher") is True
        info = trigger.running_info(settings, 1)
        assert info["launcher"] is True and info["pid"] != proc.pid
        log = Path(info["log"])
        while alive(info["pid"]):
            assert time.monotonic() < deadline + 300, log.read_text()[-3000:]
            time.sleep(0.5)
        out = log.read_text()
        assert "=== labelloop feedback result ===" in out, out[-3000:]
        assert "decision       retrain" in out
        turn = loop_status.turns(settings, limit=1)[0]
        assert turn["state"] == "done" and turn["trigger"] == "test: warm launcher"
        assert len(registry.list_versions(settings)) == before + 1
        assert trigger.running_info(settings, 1) is None
        while list(folder.glob("settings-1-*.yaml")):  # the launcher reaps within a second
            assert time.monotonic() < deadline + 330, "the settings snapshot outlived the turn"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
