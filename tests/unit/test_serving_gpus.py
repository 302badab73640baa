"""serving.gpus: workers spread over GPUs, one each (services/gpus.py), checked on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labelloop.settings import ConfigError, ServingSettings
from services.gpus import check_gpus, worker_device
from tests.helpers import REPO_ROOT


def test_workers_are_spread_one_gpu_each():
    cfg = ServingSettings(gpus=2, workers=4)
    assert [worker_device(cfg, i) for i in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:0",
                                                              "cuda:1"]
    check_gpus(cfg, gpu_count=2)


def test_off_by_default():
    cfg = ServingSettings(workers=3)
    assert worker_device(cfg, 2) == "auto"
    check_gpus(cfg, gpu_count=0)


@pytest.mark.parametrize("cfg, gpus, message", [
    (ServingSettings(gpus=2, workers=2), 0, "serving.gpus is 2 but this machine has 0 GPU"),
    (ServingSettings(gpus=2, workers=1), 2, "set serving.workers to a multiple of 2"),
    (ServingSettings(gpus=2, workers=2, device="cpu"), 2, "set serving.device to auto"),
])
def test_bad_settings_name_the_fix(cfg, gpus, message):
    with pytest.raises(ConfigError, match=message):
        check_gpus(cfg, gpu_count=gpus)


def test_service_reads_the_setting_and_bentoml_passes_worker_ids():
    """The config path: settings from the environment reach the service class, BentoML starts
    `workers` processes with --worker-id (what server_context.worker_index reads)."""
    env = {**os.environ, "LABELLOOP__SERVING__GPUS": "2", "LABELLOOP__SERVING__WORKERS": "4",
           "BENTOML_DO_NOT_TRACK": "true"}
    code = ("import services.service as s, inspect, _bentoml_impl.server.serving as srv; "
            "print(s.SETTINGS.serving.gpus, s.Labelloop.config['workers'], "
            "'--worker-id' in inspect.getsource(srv))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "4", "True"], out.stderr[-2000:]
