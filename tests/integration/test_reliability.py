"""Reliability of the real service (issue 11): a soak with a hot reload, a webhook storm with
the worker killed, kill -9 of the parent.

`bentoml serve` is a parent (BentoML's arbiter, which holds nothing but the supervision) and a
worker that serves. One real server for the module (two registered versions):
0. `benchmarks/soak.py` for 60 s from a second process, 32 clients, the champion moved and
   reloaded halfway: every request answered (503 = load shed is an answer), both versions
   served, the memory of every service process sampled;
1. a storm of Label Studio webhook events (replays, out-of-order updates, deletes before their
   creates, 16 concurrent senders that retry what got no answer, as an at-least-once sender
   does) with a kill -9 of the worker in the middle: the parent starts a new worker, and the
   final labels store equals the ground truth, nothing lost or duplicated;
2. kill -9 of the parent: the worker notices and exits, the port is free, health checks stop
   answering, and the same command starts the service again on the same port, serving the
   champion with the labels store intact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from annotation import webhook
from labelloop.labels_store import LabelsStore
from labelloop.settings import Settings, load_settings
from labelloop import registry
from tests.helpers import REPO_ROOT, free_port, register_untrained_version, stop_process_group
from tests.integration.test_service import ADMIN, HOOK_SECRET, _env, start_server, wait_ready

pytestmark = pytest.mark.integration

LABELS = ["negative", "neutral", "positive"]
SENDERS = 16


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # as servers bind: only a listening socket blocks it, not connections in TIME_WAIT
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("crash")
    settings = load_settings(overrides={"data_dir": str(data_dir)}, environ={})
    version = register_untrained_version(settings, seed=0, champion=True)
    register_untrained_version(settings, seed=1, champion=False)  # what the soak reloads to
    port = free_port()
    env = _env(data_dir, LABELLOOP__SERVING__POLL_INTERVAL_S="0")
    state = {"settings": settings, "version": version, "port": port, "env": env,
             "url": f"http://127.0.0.1:{port}", "data_dir": data_dir, "procs": []}

    def start(log_name: str):
        log = data_dir / log_name
        proc = start_server(env, port, log)
        state["procs"].append(proc)
        wait_ready(proc, state["url"], log)
        return proc

    state["start"] = start
    state["proc"] = start("server.log")
    try:
        yield state
    finally:
        for proc in state["procs"]:
            for pid in _children(proc.pid):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            stop_process_group(proc)


def _champion(settings) -> str:
    return str(registry.get_champion(settings).version)


# ---- the soak ------------------------------------------------------------------------------

def test_soak_with_a_hot_reload_answers_every_request(served, tmp_path):
    out = tmp_path / "soak.json"
    env = {**served["env"], "LABELLOOP__DATA_DIR": str(served["data_dir"])}
    run = subprocess.run([sys.executable, "benchmarks/soak.py", "--url", served["url"],
                          "--admin-token", ADMIN, "--clients", "32", "--minutes", "1",
                          "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout[-1500:])
    report = json.loads(out.read_text())
    assert report["answers"] > 100
    assert report["errors"] == {}, report["errors"]  # no 500, no dropped connection (503 = shed)
    assert report["reload"]["status"] == 200 and report["reload"]["answer"]["changed"]
    served_versions = set().union(*(m["versions"] for m in report["per_minute"]))
    assert {report["reload"]["from"], report["reload"]["to"]} <= served_versions
    roles = {k for m in report["memory_mb"] for k in m if k != "t_s"}
    assert "parent" in roles and any(r.startswith("worker") for r in roles), roles
    assert all(m["p99_ms"] > 0 for m in report["per_minute"])


# ---- the storm -----------------------------------------------------------------------------

def _event(action, ann_id, task_id, label, at):
    return {"action": action, "project": {"id": 1},
            "annotation": {"id": ann_id, "task": task_id, "project": 1,
                           "result": [{"type": "choices", "from_name": "label", "to_name": "text",
                                       "value": {"choices": [label]}}],
                           "created_at": "2026-01-01T00:00:00Z", "updated_at": at},
            "task": {"id": task_id, "project": 1, "data": {"text": f"storm text {task_id}"}}}


def storm_events(n_annotations=120, seed=11):
    """(events in send order, events in causal order, truth: annotation id -> label or None)."""
    rng = random.Random(seed)
    causal, truth = [], {}
    for ann in range(1, n_annotations + 1):
        versions = rng.randint(1, 4)
        history = []
        for v in range(versions):
            at = f"2026-01-01T00:{v:02d}:00Z"
            action = "ANNOTATION_CREATED" if v == 0 else "ANNOTATION_UPDATED"
            history.append(_event(action, ann, ann, rng.choice(LABELS), at))
        truth[ann] = history[-1]["annotation"]["result"][0]["value"]["choices"][0]
        if rng.random() < 0.2:
            history.append({"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                            "annotations": [{"id": ann}]})
            truth[ann] = None
        causal.extend(history)
    sent = list(causal) + rng.sample(causal, len(causal) // 2)  # replays
    rng.shuffle(sent)  # out of order; some deletes now come before their creates
    return sent, causal, truth


def _deliver(url: str, event: dict, deadline: float) -> int:
    """Send until the service answers 2xx (an at-least-once sender); returns the attempts."""
    attempts = 0
    while True:
        attempts += 1
        try:
            r = httpx.post(f"{url}/ls/webhook", json=event, timeout=10,
                           headers={"X-Labelloop-Secret": HOOK_SECRET})
            if r.status_code < 300:
                return attempts
            assert r.status_code >= 500 or r.status_code == 503, (r.status_code, r.text)
        except httpx.TransportError:
            pass  # the worker is down: try again
        assert time.monotonic() < deadline, "the service did not come back"
        time.sleep(0.2)


def _state_of(path) -> dict:
    with LabelsStore(path) as store:
        rows = store.rows(source="label-studio", project=1)
    return {int(r.annotation_id): (r.label if r.status == "active" else None)
            for r in rows.itertuples()}


def test_webhook_storm_with_the_worker_killed_loses_nothing(served, tmp_path):
    sent, causal, truth = storm_events()
    url, proc = served["url"], served["proc"]
    worker = _children(proc.pid)
    assert len(worker) == 1, worker
    done = [0]
    killed = threading.Event()

    def send(event):
        attempts = _deliver(url, event, time.monotonic() + 180)
        done[0] += 1
        if done[0] >= len(sent) // 3 and not killed.is_set():
            killed.set()
            os.kill(worker[0], signal.SIGKILL)  # mid-storm
        return attempts

    with ThreadPoolExecutor(SENDERS) as pool:
        attempts = list(pool.map(send, sent))
    assert killed.is_set()
    retried = sum(a > 1 for a in attempts)
    print(f"storm: {len(sent)} events ({len(causal)} distinct), {SENDERS} senders, "
          f"{retried} retried after the kill")

    # the parent started a new worker, which is ready and serves the champion
    new = _children(proc.pid)
    assert new and new != worker and not _alive(worker[0])
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    meta = httpx.get(f"{url}/metadata", timeout=5).json()
    assert meta["model_version"] == _champion(served["settings"])

    # the store equals the truth, and a store fed the events once, in causal order
    got = _state_of(served["settings"].labels_path)
    assert got == truth
    ref = Settings(data_dir=str(tmp_path))
    for event in causal:
        webhook.handle_event(ref, event)
    assert _state_of(ref.labels_path) == got


# ---- kill -9 of the parent -------------------------------------------------------------------

def test_parent_killed_frees_the_port_and_the_same_command_restarts(served):
    url, proc, port = served["url"], served["proc"], served["port"]
    before = _state_of(served["settings"].labels_path)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15  # generous: only detects a worker that never exits
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "the orphaned worker kept running"
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.1)  # the exiting worker closes its sockets last
    assert _port_free(port), __import__("subprocess").run(
        ["ss", "-ltnp"], capture_output=True, text=True).stdout
    with pytest.raises(httpx.TransportError):  # health checks tell the truth: nobody serves
        httpx.get(f"{url}/readyz", timeout=2)

    served["proc"] = served["start"]("restart.log")  # the same command, the same port
    r = httpx.post(f"{url}/classify", json={"text": "back again"}, timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == _champion(served["settings"])
    assert _state_of(served["settings"].labels_path) == before
