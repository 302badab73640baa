"""Fixtures of the deploy tests (test_image.py, test_stacks.py), shared for the session.

`ci_image`: the service image built ONCE per session with `labelloop image build` (name
`localhost/labelloop-ci`, not the users' `localhost/labelloop`); podman's storage under
~/.cache/labelloop/containers keeps the base image and the layers between runs, and the build
is skipped outright when its inputs did not change since the last one (labelloop/image.py).
The containerized pipeline test builds its step images on the same image.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

IMAGE_NAME = "localhost/labelloop-ci"


def deploy_cli_env(**extra: str) -> dict[str, str]:
    from tests.helpers import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"LABELLOOP__IMAGE__NAME": IMAGE_NAME, "PYTHONPATH": str(REPO_ROOT), **extra})
    return env


@pytest.fixture(scope="session")
def container_engine():
    from labelloop import image
    from labelloop.settings import ImageSettings

    return image.find_engine(ImageSettings())  # ImageError naming `make containers` if none


@pytest.fixture(scope="session")
def ci_image(container_engine):
    from labelloop.settings import ImageSettings
    from tests.helpers import REPO_ROOT

    out = subprocess.run([sys.executable, "-m", "labelloop.cli", "image", "build"],
                         cwd=str(REPO_ROOT), env=deploy_cli_env(), capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ref = f"{IMAGE_NAME}:cpu"
    assert f"built {ref}" in out.stdout or f"up to date {ref}" in out.stdout, out.stdout
    # the CPU build of torch, at the pinned version, and ZenML for the feedback loop
    probe = container_engine.run(
        "run", "--rm", "--network", "host", "--entrypoint", "python", ref, "-c",
        "import torch, zenml, labelloop.cli; print(torch.__version__, torch.version.cuda)",
        timeout=300)
    assert probe.stdout.decode().split() == [f"{ImageSettings().torch_version}+cpu", "None"]
    return ref
