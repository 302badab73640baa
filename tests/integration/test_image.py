"""The service image, built and run for real (podman; `make test` installs it: `make containers`).

`labelloop image build` builds the bento and its image (the local Debian base image and the
layers are kept in podman's storage under ~/.cache/labelloop/containers, so a second run
rebuilds nothing that did not change). The container runs on the host network with a free
port, pulls the champion from a real MLflow server, answers /readyz, /classify, /metadata and
the Label Studio backend's /ls/predict with Basic auth, reloads when the alias moves in that
registry, and is stopped and removed leaving no container and a free port. A build that fails
leaves no image tagged.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from labelloop import registry
from labelloop.settings import Settings
from tests.helpers import REPO_ROOT, free_port, register_untrained_version
from tests.helpers import mlflow_server as mlflow_server_at
from tests.integration.conftest import IMAGE_NAME, deploy_cli_env as _cli_env

pytestmark = pytest.mark.integration

PASSWORD, ADMIN = "ls-secret-" + uuid.uuid4().hex[:8], "admin-" + uuid.uuid4().hex[:8]
LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="negative"/><Choice value="neutral"/><Choice value="positive"/>
  </Choices>
</View>"""


@pytest.fixture(scope="module")
def engine(container_engine):
    return container_engine


@pytest.fixture(scope="module")
def built(ci_image):
    return ci_image


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_at(root) as uri:
        settings = Settings(data_dir=str(root / "client"), registry={"tracking_uri": uri})
        v1 = register_untrained_version(settings, seed=1, champion=False)
        v2 = register_untrained_version(settings, seed=2, champion=True)
        yield {"uri": uri, "settings": settings, "v1": v1, "v2": v2}


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_image_serves_the_registry_champion_and_reloads(engine, built, mlflow_server):
    port, name = free_port(), f"labelloop-test-{uuid.uuid4().hex[:8]}"
    envs = {"PORT": str(port), "LABELLOOP__SERVING__HOST": "127.0.0.1",
            "LABELLOOP__REGISTRY__TRACKING_URI": mlflow_server["uri"],
            "LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD": PASSWORD,
            "LABELLOOP__SERVING__ADMIN_TOKEN": ADMIN, "LABELLOOP__SERVING__POLL_INTERVAL_S": "0"}
    args = ["run", "-d", "--name", name, "--network", "host"]
    for key, value in envs.items():
        args += ["-e", f"{key}={value}"]
    engine.run(*args, built)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = engine.run("inspect", "-f", "{{.State.Running}}", name).stdout.decode()
            assert state.strip() == "true", engine.run("logs", name).stderr.decode()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("not ready: " + engine.run("logs", name).stderr.decode()[-3000:])

        v1, v2 = mlflow_server["v1"], mlflow_server["v2"]
        r = httpx.post(f"{url}/classify", json={"text": "I love this"}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == v2
        assert r.json()["label"] in ("negative", "neutral", "positive")
        meta = httpx.get(f"{url}/metadata", timeout=10).json()
        assert meta["model_version"] == v2 and meta["tracking_uri"] == mlflow_server["uri"]

        tasks = [{"id": i, "data": {"text": f"tweet {i}"}} for i in range(3)]
        payload = {"tasks": tasks, "project": "1.1", "label_config": LABEL_CONFIG, "params": {}}
        assert httpx.post(f"{url}/ls/predict", json=payload, timeout=30).status_code == 401
        r = httpx.post(f"{url}/ls/predict", json=payload, auth=("labelloop", PASSWORD),
                       timeout=30)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 3 and all(x["model_version"] == v2 for x in results)
        assert results[0]["result"][0]["value"]["choices"][0] in ("negative", "neutral",
                                                                  "positive")

        # the alias moves in the registry the container points at: a reload picks it up
        registry.set_champion(mlflow_server["settings"], v1)
        r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"},
                       timeout=120)
        assert r.status_code == 200 and r.json()["changed"] is True, r.text
        assert r.json()["current"] == v1
        assert httpx.post(f"{url}/classify", json={"text": "meh"},
                          timeout=30).json()["model_version"] == v1
    finally:
        engine.run("stop", "-t", "10", name, check=False, timeout=60)
        engine.run("rm", "-f", name, check=False, timeout=60)
    left = engine.run("ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}")
    assert left.stdout.decode().strip() == ""
    assert not _port_open(port)


def test_failed_build_leaves_no_tagged_image(engine):
    """A base image that cannot be had: one error line, and no image under the name."""
    bad = "localhost/labelloop-ci-broken"
    out = subprocess.run([sys.executable, "-m", "labelloop.cli", "image", "build"],
                         cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=600,
                         env=_cli_env(LABELLOOP__IMAGE__NAME=bad,
                                      LABELLOOP__IMAGE__BASE_IMAGE="localhost/no-such-base:0"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "labelloop image: error: the image build failed (nothing was tagged)" in out.stderr
    names = engine.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    assert bad not in names, names
