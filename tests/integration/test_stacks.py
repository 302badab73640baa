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
