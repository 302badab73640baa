"""annotation/side_server.py with real processes (a sleeping child and its own child), no
annotation server: spawn -> pid file -> stop leaves nothing behind; a process that dies while
awaited is one error with its log; a recycled pid is not ours; the connect probe fails fast."""

from __future__ import annotations

import os
import sys
import time

import pytest

from annotation import side_server as side
from labelloop.processes import alive
from tests.helpers import free_port

# A parent that starts a child (both in the group `spawn` makes) and sleeps.
FAMILY = ("import subprocess, sys, time; "
          "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
          "open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(60)")


def test_spawn_read_and_stop_the_whole_group(tmp_path):
    pid_file, log, child_file = tmp_path / "x.pid", tmp_path / "x.log", tmp_path / "child"
    proc = side.spawn([sys.executable, "-c", FAMILY, str(child_file), "side-server-test"],
                      tmp_path, side.clean_env(), log, pid_file)
    deadline = time.time() + 20
    while not child_file.is_file() and time.time() < deadline:
        time.sleep(0.05)
    child = int(child_file.read_text())
    assert side.read_pid(pid_file, (b"side-server-test",)) == proc.pid
    assert side.read_pid(pid_file, (b"label-studio",)) is None  # alive, but not that server
    said = []
    side.stop_pid(proc.pid, "family", timeout=5, progress=said.append)
    time.sleep(0.3)
    assert not alive(proc.pid) and not alive(child)
    assert side.read_pid(pid_file, (b"side-server-test",)) is None
    assert said == []  # SIGTERM was enough


def test_a_process_that_dies_while_awaited_is_one_error_with_its_log(tmp_path):
    log = tmp_path / "x.log"
    proc = side.spawn([sys.executable, "-c", "print('boom: no config'); raise SystemExit(3)"],
                      tmp_path, side.clean_env(), log, tmp_path / "x.pid")
    with pytest.raises(RuntimeError, match=r"(?s)the thing exited during startup.*boom"):
        side.wait_until(lambda: False, lambda: proc.poll() is None, 30, lambda m: None,
                        "the thing", log, RuntimeError, poll=0.05)
    stopped = []
    with pytest.raises(RuntimeError, match="did not come up within 0s"):
        side.wait_until(lambda: False, lambda: True, 0.0, lambda m: None, "the thing", log,
                        RuntimeError, on_timeout=lambda: stopped.append(1))
    assert stopped == [1]


def test_stored_secret_is_made_once_and_private(tmp_path):
    made = []
    path = tmp_path / "d" / "key"
    first = side.stored_secret(path, lambda: made.append(1) or "s3cret")
    assert first == "s3cret" and side.stored_secret(path, lambda: "other") == "s3cret"
    assert made == [1] and (path.stat().st_mode & 0o777) == 0o600


def test_clean_env_drops_the_project_venv():
    os.environ["DJANGO_SETTINGS_MODULE"] = "x"
    try:
        env = side.clean_env()
    finally:
        del os.environ["DJANGO_SETTINGS_MODULE"]
    assert not set(side.LEAKING_VARIABLES) & set(env)


def test_reachable_fails_fast_with_the_callers_error():
    class Down(RuntimeError):
        pass

    started = time.monotonic()
    with pytest.raises(Down, match=r"^tool is down \(ConnectionRefusedError"):
        side.reachable("127.0.0.1", free_port(), Down, "tool is down")
    assert time.monotonic() - started < 2
