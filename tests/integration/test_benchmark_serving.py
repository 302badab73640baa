"""benchmarks/serving.py end to end, tiny: naive server and a 2-worker `bentoml serve` on a
bundle, closed loop and the half-peak open loop, JSON written. Keeps the benchmark from rotting
between the runs on a GPU machine (where a broken import costs device time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from labelloop import modeling
from labelloop.settings import load_settings
from labelloop.tasks import task_from_settings
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


def test_serving_benchmark_runs_and_reports_worker_balance(tmp_path):
    settings = load_settings(environ={})
    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    torch.manual_seed(0)
    bundle = modeling.save_bundle(
        modeling.load_base_classifier(base, task), modeling.load_tokenizer(base),
        tmp_path / "bundle", {"task": task.to_dict(), "max_length": 32, "version": "1"})
    out = tmp_path / "bench.json"
    profile = tmp_path / "profile.yaml"  # a serving profile, as configs/serving-gpu.yaml is
    profile.write_text("serving:\n  batcher: inprocess\n  workers: 2\n")
    cmd = [sys.executable, "benchmarks/serving.py", "--bundle", str(bundle), "--device", "cpu",
           "--skip", "ceiling", "--concurrency", "4", "--duration", "1.5", "--rounds", "1",
           # a cap of 5 requests would end a level within milliseconds: the minimum holds it
           "--max-requests", "5", "--min-level-s", "1.0",
           "--config", str(profile), "--half-peak",
           "--set", "max_connection_age_s=0.5", "--data-dir", str(tmp_path / "data"),
           "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "service: 2 worker(s) ready" in run.stdout
    res = json.loads(out.read_text())
    by = {r["system"]: r for r in res["runs"]}
    assert set(by) == {"naive", "service"}
    assert res["min_level_s"] == 1.0 and res["max_requests"] == 5
    for r in by.values():
        assert r["requests"] > 0 and r["errors"] == 0 and r["throughput"] > 0
        assert r["seconds"] >= 1.0 and r["requests"] > 5  # ran the minimum, past the cap
        assert r["stopped_by"] == ["max_requests"]
    # the service's own handler time is part of what the client waited for; naive has none
    assert 0 < by["service"]["server_p50_ms"] <= by["service"]["p50_ms"]
    assert "server_p50_ms" not in by["naive"]
    balance = by["service"]["worker_balance"]
    assert len(balance["requests_per_worker"]) == 2
    assert sum(balance["requests_per_worker"]) >= by["service"]["requests"]  # warm-up counts too
    half = res["half_peak"]
    assert half["open_loop"] and half["errors"] == 0 and half["seconds"] >= 1.0
    assert half["offered_rate"] == pytest.approx(by["service"]["throughput"] / 2)
    assert half["send_lag_p99_ms"] >= 0 and half["server_p99_ms"] > 0
    assert res["service_env"]["LABELLOOP_CONFIG"] == str(profile)
    assert res["service_env"]["LABELLOOP__SERVING__MAX_CONNECTION_AGE_S"] == "0.5"
    assert "4" in res["ratios_service_over_naive"]


def test_serving_benchmark_rejects_a_malformed_setting(tmp_path):
    run = subprocess.run([sys.executable, "benchmarks/serving.py", "--set", "no_equals_sign",
                          "--data-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "--set expects KEY=VALUE" in run.stderr
    run = subprocess.run([sys.executable, "benchmarks/serving.py", "--set", "workers=zero",
                          "--data-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "invalid settings" in run.stderr
    assert "workers" in run.stderr
    run = subprocess.run([sys.executable, "benchmarks/serving.py", "--config",
                          str(tmp_path / "missing.yaml"), "--data-dir", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "config file not found" in run.stderr
