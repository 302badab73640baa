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
    # only torch: the image installs the pinned project deps (configs/image/Dockerfile.j2)
    assert "torch==" in reqs and "bentoml" in reqs
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "services.service:Labelloop"


def test_serve_without_champion_fails_fast_with_a_clear_message(tmp_path):
    from tests.helpers import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"LABELLOOP__DATA_DIR": str(tmp_path / "empty"), "BENTOML_DO_NOT_TRACK": "true"})
    out = subprocess.run([sys.executable, "-m", "bentoml", "serve", "--port", str(free_port())],
                         cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    err = out.stdout + out.stderr
    assert "run `labelloop train`" in err and str(tmp_path / "empty") in err


def test_labelloop_serve_without_champion(tmp_path, monkeypatch):
    from labelloop.registry import RegistryError
    from services.run import serve

    monkeypatch.setenv("LABELLOOP__DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(RegistryError, match="labelloop train"):
        serve(None)


def test_serve_with_more_gpus_than_present_fails_fast(tmp_path):
    """serving.gpus on a machine without that many GPUs: one line naming the setting, before
    any worker starts (the CPU check of the multi-GPU configuration path)."""
    import torch

    from tests.helpers import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"LABELLOOP__DATA_DIR": str(tmp_path / "empty"), "BENTOML_DO_NOT_TRACK": "true",
                "LABELLOOP__SERVING__GPUS": str(torch.cuda.device_count() + 1),
                "LABELLOOP__SERVING__WORKERS": "8"})
    out = subprocess.run([sys.executable, "-m", "bentoml", "serve", "--port", str(free_port())],
                         cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "set serving.gpus to at most" in out.stdout + out.stderr
