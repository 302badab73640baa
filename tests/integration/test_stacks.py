"""stack.name: a stack that cannot run the pipelines is one clear error, before any step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

PROBE = r"""
import json
from zenml.client import Client
from zenml.enums import StackComponentType
from labelloop.settings import load_settings
from pipelines.stack import ensure_stack
out = {}
def attempt(name, **overrides):
    try:
        ensure_stack(load_settings(overrides=overrides))
        out[name] = "ok"
    except ValueError as exc:
        out[name] = str(exc)
attempt("local")
default = Client().get_stack("default")
Client().create_stack(name="bare", components={
    StackComponentType.ORCHESTRATOR: default.components[StackComponentType.ORCHESTRATOR][0].id,
    StackComponentType.ARTIFACT_STORE: default.components[StackComponentType.ARTIFACT_STORE][0].id})
attempt("sqlite", stack={"name": "labelloop-containers"})
attempt("no_api", stack={"name": "labelloop-containers"},
        registry={"tracking_uri": "http://127.0.0.1:9"})
attempt("unknown", stack={"name": "nope"})
attempt("no_tracker", stack={"name": "bare"})
print(json.dumps(out))
"""


def test_stacks_that_cannot_run_the_pipelines(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "PYTHONPATH": str(REPO_ROOT),
                "LABELLOOP__DATA_DIR": str(tmp_path / "data"),
                "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    probe = tmp_path / "probe.py"  # a file: ZenML finds its source root from the main module
    probe.write_text(PROBE)
    run = subprocess.run([sys.executable, str(probe)], cwd=str(REPO_ROOT), env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["local"] == "ok"
    assert "steps in containers reach MLflow as a server" in out["sqlite"]
    assert "needs a Docker-compatible API" in out["no_api"] and "DOCKER_HOST" in out["no_api"]
    assert "no ZenML stack named 'nope'" in out["unknown"]
    assert "has no experiment tracker named 'labelloop_mlflow'" in out["no_tracker"]
    assert "zenml stack update bare -e labelloop_mlflow" in out["no_tracker"]


def test_training_then_feedback_with_each_step_in_its_own_container(ci_image, container_engine,
                                                                    tmp_path_factory):
    """The same pipelines, only the stack changes: `labelloop train` then a `feedback` turn on
    `labelloop-containers` (ZenML's local Docker orchestrator on podman's Docker-compatible API,
    the step image built by ZenML's local image builder on the CI image, the artifact store
    mounted into every step container, MLflow reached as a server). Each step runs in its own
    container, removed when it ends. Label Studio is not started: sync is skipped with a note,
    labels come from the store as the webhook writes them (test_feedback_pipeline.py)."""
    import time

    from labelloop import registry
    from labelloop.settings import load_settings
    from tests.helpers import free_port, mlflow_server, small_corpus_env, stop_process_group
    from tests.integration.test_feedback_pipeline import add_labels

    engine = container_engine
    working_before = _working_containers(engine)
    root = tmp_path_factory.mktemp("containers")
    sock = root / "podman.sock"
    service_log = root / "podman-service.log"
    service = subprocess.Popen([engine.path, "system", "service", "--time=0", f"unix://{sock}"],
                               env={**os.environ, **engine.env}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=service_log.open("wb"))
    started = time.time()
    try:
        with mlflow_server(root / "mlflow") as uri:
            env, corpus = small_corpus_env(
                root, rows=160, seed=7,
                LABELLOOP__TRAINING__MAX_STEPS="2",
                LABELLOOP__EVALUATION__SAMPLE_PREDICTIONS="3",
                LABELLOOP__STACK__NAME="labelloop-containers",
                LABELLOOP__STACK__STEP_IMAGE=ci_image,
                LABELLOOP__REGISTRY__TRACKING_URI=uri,
                LABELLOOP__STUDIO__PORT=str(free_port()),  # nothing listens: sync is skipped
                LABELLOOP__STUDIO__API_TOKEN="x" * 40,
                LABELLOOP__SERVING__PORT=str(free_port()),
                LABELLOOP__SERVING__ADMIN_TOKEN="admin-token-for-tests",
                LABELLOOP__FEEDBACK__MIN_NEW_LABELS="4",
                LABELLOOP__FEEDBACK__MIN_FRESH_SCORE="0",
                LABELLOOP__FEEDBACK__MAX_DROP="1",
                DOCKER_HOST=f"unix://{sock}")
            env["PYTHONPATH"] = str(REPO_ROOT)
            while not sock.exists():
                assert service.poll() is None and time.time() < started + 60, "no podman API"
                time.sleep(0.2)
            settings = load_settings(
                environ={k: v for k, v in env.items() if k.startswith("LABELLOOP")})

            def cli(*args, **extra):
                return subprocess.run([sys.executable, "-m", "labelloop.cli", *args],
                                      env={**env, **extra}, cwd=str(REPO_ROOT),
                                      capture_output=True, text=True, timeout=1500)

            # A registry the steps cannot reach: one line, before any container starts.
            r = cli("train", LABELLOOP__REGISTRY__TRACKING_URI="http://127.0.0.1:9")
            assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
            assert "cannot reach the MLflow server at http://127.0.0.1:9" in r.stderr, (
                r.stderr, service.poll(), service_log.read_text()[-2000:])

            r = cli("train")
            out = r.stdout + r.stderr
            assert r.returncode == 0, out[-6000:]
            print(out[-3000:])
            assert "promoted to champion" in out
            champion = registry.get_champion(settings)
            assert champion is not None and str(champion.version) == "1"
            assert champion.tags[registry.STATUS_TAG] == "ready"
            run = _last_run(env, "training")
            assert run["stack"] == "labelloop-containers" and run["status"] == "completed", run
            assert set(run["steps"]) == {"load_data", "fine_tune", "evaluate_model",
                                         "register_model", "promote_model"}, run
            started_images = _containers_started(engine, since=started)
            assert len(started_images) >= 5, started_images  # one container per step

            texts = corpus["text"].tolist()
            labels = ["positive", "negative", "neutral"] * 2
            add_labels(settings, list(zip(texts[:6], labels)), start_id=100)
            before_feedback = time.time()
            r = cli("feedback", "--project", "1", "--reason", "containers test")
            out = r.stdout + r.stderr
            assert r.returncode == 0, out[-6000:]
            print(out[-3000:])
            assert "sync: label-studio: skipped" in out
            assert "decision       retrain" in out and "training       warm start" in out
            versions = {str(mv.version): mv for mv in registry.list_versions(settings)}
            assert set(versions) == {"1", "2"}
            assert versions["2"].tags["labelloop.train_rule"] == "warm"
            run = _last_run(env, "feedback")
            assert run["stack"] == "labelloop-containers" and run["status"] == "completed", run
            assert set(run["steps"]) == {"sync_annotations", "evaluate_fresh", "decide_retrain",
                                         "retrain_if_needed", "reload_service",
                                         "push_predictions"}, run
            started_images = _containers_started(engine, since=before_feedback)
            assert len(started_images) >= 6, started_images
    finally:
        stop_process_group(service)
    left = engine.run("ps", "-a", "--format", "{{.Image}} {{.Command}}").stdout.decode()
    assert "zenml" not in left.lower(), left  # every step container was removed
    # and the image builds left no intermediate (buildah working) container mounted behind
    assert _working_containers(engine) - working_before == set()


def _working_containers(engine) -> set[str]:
    """The build containers podman keeps outside its own list (buildah's working containers)."""
    out = engine.run("ps", "-a", "--external", "--format", "{{.ID}} {{.Names}}", timeout=60)
    return {line for line in out.stdout.decode().splitlines() if "working-container" in line}


RUNS_PROBE = r"""
import json, sys
from zenml.client import Client
run = Client().get_pipeline(sys.argv[1]).last_run
print(json.dumps({"stack": run.stack.name if run.stack else None, "status": str(run.status),
                  "steps": {name: str(step.status) for name, step in run.steps.items()}}))
"""


def _last_run(env: dict, pipeline: str) -> dict:
    r = subprocess.run([sys.executable, "-c", RUNS_PROBE, pipeline], env=env, cwd=str(REPO_ROOT),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _containers_started(engine, since: float) -> list[str]:
    """Images of the containers podman started since `since` (its event log)."""
    out = engine.run("events", "--stream=false", "--since", str(int(since)), "--filter",
                     "event=start", "--format", "{{.Image}}", timeout=60)
    return [line for line in out.stdout.decode().splitlines() if line.strip()]
