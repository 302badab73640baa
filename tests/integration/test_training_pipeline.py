"""The real `training` pipeline end to end: real ZenML store, real MLflow SQLite store, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from labelloop import registry
from labelloop.settings import load_settings
from tests.helpers import small_corpus_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    env, _ = small_corpus_env(root, rows=480, seed=7,
                              LABELLOOP__EVALUATION__SAMPLE_PREDICTIONS="5")
    return root, env


def cli(env, *args, extra_env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "labelloop.cli", *args], env={**env, **(extra_env or {})},
        cwd=cwd or REPO, capture_output=True, text=True, timeout=600,
    )


def settings_of(env):
    return load_settings(environ={k: v for k, v in env.items() if k.startswith("LABELLOOP")})


def test_bad_inputs_fail_fast_and_touch_nothing(workspace):
    root, env = workspace
    bad = {
        "LABELLOOP__DATASET__LABEL_COLUMN": "no_such_column",
    }
    r = cli(env, "train", extra_env=bad)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "missing column(s) ['no_such_column']" in r.stderr
    r = cli(env, "train", extra_env={"LABELLOOP__MODEL__BASE": str(root / "no-model")})
    assert r.returncode == 2 and "no Hugging Face model directory" in r.stderr
    r = cli(env, "train", extra_env={"LABELLOOP__TRAINING__EPOHCS": "1"})
    assert r.returncode == 2 and "unknown key 'training.epohcs'" in r.stderr
    (root / "odd.csv").write_text("text,sentiment\nhello,ecstatic\nbye,negative\n")
    r = cli(env, "train", extra_env={"LABELLOOP__DATASET__PATH": str(root / "odd.csv")})
    assert r.returncode == 2 and "['ecstatic']" in r.stderr
    assert registry.list_versions(settings_of(env)) == []
    assert registry.get_champion(settings_of(env)) is None


def test_first_run_registers_and_becomes_champion(workspace):
    root, env = workspace
    r = cli(env, "train", extra_env={
        "LABELLOOP__TRAINING__METHOD": "full", "LABELLOOP__TRAINING__LEARNING_RATE": "0.0001",
        "LABELLOOP__TRAINING__EPOCHS": "2",
    })
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "promoted to champion" in r.stdout and "test macro-F1" in r.stdout
    s = settings_of(env)
    champion = registry.get_champion(s)
    assert champion is not None and str(champion.version) == "1"
    assert champion.tags[registry.STATUS_TAG] == "ready"
    assert champion.tags["method"] == "full"

    # The version carries everything needed to serve it.
    bundle = registry.fetch_bundle(s, "1")
    meta = json.loads((bundle / "labelloop.json").read_text())
    assert meta["task"]["labels"] == ["negative", "neutral", "positive"]
    assert (bundle / "model.safetensors").is_file() and (bundle / "tokenizer.json").is_file()
    # model.pooling auto on MiniLM (a sentence-transformers model): mean, in the model's config
    assert json.loads((bundle / "config.json").read_text())["labelloop_pooling"] == "mean"

    # The MLflow run holds params, metrics, loss curve and evaluation artifacts.
    client = mlflow.tracking.MlflowClient(s.tracking_uri)
    run = client.get_run(champion.run_id)
    assert 0.0 <= run.data.metrics["test_macro_f1"] <= 1.0
    assert run.data.params["method"] == "full" and run.data.params["pooling"] == "mean"
    # The TF-IDF baseline of the same split is logged and compared in the same run.
    assert 0.0 < run.data.metrics["baseline_macro_f1"] <= 1.0
    beats = run.data.metrics["test_macro_f1"] > run.data.metrics["baseline_macro_f1"]
    assert run.data.metrics["beats_baseline"] == float(beats)
    assert "baseline       tfidf+logreg (same split)" in r.stdout
    assert ("the model beats it" if beats else "the model does NOT beat it") in r.stdout
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/test_confusion_matrix.png" in artifacts
    assert "evaluation/test_worst_errors.json" in artifacts
    # Artifacts live under the data dir, not in ./mlruns of whatever directory we ran from.
    assert run.info.artifact_uri.startswith(Path(s.data_path).as_uri())

    # A ZenML model version is linked to the MLflow version. (Asked in a fresh process: ZenML's
    # Client is a per-process singleton bound to whichever store was opened first.)
    probe = subprocess.run([sys.executable, "-c", (
        "import json, labelloop; from zenml.client import Client; "
        f"mv = Client().get_model_version({s.registry.model_name!r}, 'latest'); "
        "print(json.dumps({k: str(v) for k, v in mv.run_metadata.items()}))")],
        env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    metadata = json.loads(probe.stdout.strip().splitlines()[-1])
    assert metadata["mlflow_model_version"] == "1"
    assert metadata["mlflow_run_id"] == champion.run_id


def test_worse_challenger_does_not_take_the_alias(workspace):
    root, env = workspace
    # One step at a vanishing learning rate: an essentially untrained head.
    r = cli(env, "train", extra_env={
        "LABELLOOP__TRAINING__MAX_STEPS": "1", "LABELLOOP__TRAINING__LEARNING_RATE": "1e-9",
        "LABELLOOP__PROMOTION__MARGIN": "0.0",
    })
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "not promoted" in r.stdout
    s = settings_of(env)
    assert str(registry.get_champion(s).version) == "1"
    challenger = registry.get_version(s, "2")
    assert challenger.tags[registry.STATUS_TAG] == "ready"
    client = mlflow.tracking.MlflowClient(s.tracking_uri)
    decision = json.loads(Path(client.download_artifacts(
        challenger.run_id, "promotion/decision.json", str(root))).read_text())
    assert decision["promote"] is False
    assert decision["champion_version"] == "1"
    assert decision["challenger_score"] < decision["champion_score"]
    assert decision["beats_baseline"] is False and decision["baseline_score"] > 0
    assert "does not beat the tfidf+logreg baseline" in decision["reason"]


def test_required_baseline_keeps_out_even_the_first_model(tmp_path):
    """promotion.require_beats_baseline: an untrained first model, which would otherwise become
    champion (there is none), is registered but kept out, and the summary says why."""
    env, _ = small_corpus_env(tmp_path, rows=240, seed=11,
                              LABELLOOP__EVALUATION__SAMPLE_PREDICTIONS="0")
    r = cli(env, "train", extra_env={
        "LABELLOOP__PROMOTION__REQUIRE_BEATS_BASELINE": "true",
        "LABELLOOP__TRAINING__MAX_STEPS": "1", "LABELLOOP__TRAINING__LEARNING_RATE": "1e-9"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "not promoted: kept out: the challenger does not beat the tfidf+logreg" in r.stdout
    s = settings_of(env)
    assert registry.get_champion(s) is None
    assert [mv.tags[registry.STATUS_TAG] for mv in registry.list_versions(s)] == ["ready"]


def test_status_command_lists_versions(workspace):
    root, env = workspace
    r = cli(env, "status")
    assert r.returncode == 0
    assert "<- champion" in r.stdout and "version   2" in r.stdout


def test_zenml_pipeline_run_with_config_file(workspace, tmp_path):
    """`zenml pipeline run` with a config file, as the README documents."""
    root, env = workspace
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "parameters:\n  overrides:\n    training:\n      max_steps: 2\n"
        "    promotion:\n      margin: 1.0\n"
    )
    zenml = str(Path(sys.executable).parent / "zenml")
    r = subprocess.run([zenml, "pipeline", "run", "pipelines.training.training", "-c", str(cfg)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = settings_of(env)
    assert [str(mv.version) for mv in registry.list_versions(s)] == ["1", "2", "3"]
    assert str(registry.get_champion(s).version) == "1"  # margin 1.0 cannot be beaten


def test_kill_9_during_training_leaves_registry_and_alias_and_is_marked_failed(workspace):
    """kill -9 of `labelloop train` mid fine-tuning: no new usable version, the alias stays, and
    the next run marks the ZenML run failed instead of leaving it `running` for ever."""
    import os
    import signal
    import time

    root, env = workspace
    s = settings_of(env)
    before = [(str(mv.version), mv.tags.get(registry.STATUS_TAG)) for mv in registry.list_versions(s)]
    champion = str(registry.get_champion(s).version)
    log = root / "killed-train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labelloop.cli", "train"], cwd=REPO,
                                env={**env, "LABELLOOP__TRAINING__MAX_STEPS": "100000"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while "fine-tune (" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert str(registry.get_champion(s).version) == champion
    after = [(str(mv.version), mv.tags.get(registry.STATUS_TAG)) for mv in registry.list_versions(s)]
    assert [v for v in after if v[1] == "ready"] == [v for v in before if v[1] == "ready"]

    r = cli(env, "train", extra_env={"LABELLOOP__TRAINING__MAX_STEPS": "1",
                                     "LABELLOOP__TRAINING__LEARNING_RATE": "1e-9"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"(pid {proc.pid}) is gone" not in r.stdout  # said in words, not as the raw reason
    assert "marked the interrupted ZenML run training-v" in r.stdout
    probe = subprocess.run([sys.executable, "-c", (
        "import labelloop; from zenml.client import Client; "
        "print(sorted({r.status.value for r in Client().list_pipeline_runs(size=100)}))")],
        env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "running" not in probe.stdout and "failed" in probe.stdout
    assert str(registry.get_champion(s).version) == champion
