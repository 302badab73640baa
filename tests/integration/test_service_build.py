"""`bentoml build` works offline and produces a bento with a Dockerfile (no Docker daemon here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


def test_bentoml_build_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                # no registry is needed to build: the model is pulled at start-up
                "LABELLOOP__DATA_DIR": str(tmp_path / "empty-data")})
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"],
                         cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    bentos = list((tmp_path / "bentoml" / "bentos" / "labelloop").iterdir())
    bento = next(p for p in bentos if p.name != "latest")
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert "ENTRYPOINT" in text and "LABELLOOP__SERVING__HOST" in text
    src = bento / "src"
    for needed in ("services/service.py", "services/ls_backend.py", "labelloop/registry.py",
                   "annotation/webhook.py", "bentofile.yaml"):
        assert (src / needed).is_file(), needed
    for excluded in ("tests", ".venv", ".labelloop"):
        assert not (src / excluded).exists(), excluded
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml" in reqs and "mlflow" in reqs and "torch" in reqs
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "services.service:Labelloop"
