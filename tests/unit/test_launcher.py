"""The warm launcher (labelloop/launcher.py): a real launcher process, real forks, a probe module
instead of the feedback pipeline (preloading only `json`, so each test takes about a second)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelloop import launcher, trigger
from labelloop.processes import alive
from labelloop.settings import Settings

PROBE = '''
import json, os, sys, time

def write(out, info):  # atomically: the test polls for the file
    open(out + ".tmp", "w").write(json.dumps(info))
    os.replace(out + ".tmp", out)

def main(argv):
    out, sleep_s = argv[0], float(argv[1])
    info = {"argv": argv, "cwd": os.getcwd(), "pid": os.getpid(), "sid": os.getsid(0),
            "marker": os.environ.get("PROBE_MARKER"),
            "hub_offline": os.environ.get("HF_HUB_OFFLINE"),
            "lock_fd": os.environ.get("LABELLOOP_FEEDBACK_LOCK_FD")}
    if len(argv) > 2 and argv[2] == "adopt":
        from labelloop import trigger
        from labelloop.settings import load_settings
        settings = load_settings(os.environ["LABELLOOP_CONFIG"])
        with trigger.feedback_lock(settings, 7, "probe"):
            info["adopted"] = True
            write(out, info)
            time.sleep(sleep_s)
        return 0
    print("probe says hello")
    write(out, info)
    time.sleep(sleep_s)
    return 3
'''


def _wait(cond, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def probe_env(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "launcher_probe.py").write_text(PROBE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(mods), os.getcwd(), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def warm(tmp_path, probe_env):
    """A launcher serving tmp_path/feedback (the trigger's folder for data_dir=tmp_path),
    watching this test process; stopped afterwards."""
    folder = tmp_path / "feedback"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelloop.launcher", "--dir", str(folder), "--watch-pid",
         str(os.getpid()), "--idle-s", "60", "--preload", "json"],
        env=probe_env, stdout=open(folder / "launcher.log", "ab"), stderr=subprocess.STDOUT)
    assert _wait(lambda: launcher.socket_path(folder).exists()), (folder / "launcher.log").read_text()
    yield folder, proc
    proc.terminate()
    proc.wait(10)


def test_child_gets_callers_world_and_is_reaped_with_cleanup(tmp_path, warm, probe_env):
    folder, proc = warm
    out, secret = tmp_path / "out.json", tmp_path / "snapshot.yaml"
    secret.write_text("password: x")
    env = dict(probe_env, PROBE_MARKER="from-the-caller")
    workdir = tmp_path / "work"
    workdir.mkdir()
    pid = launcher.launch(folder, "launcher_probe", [str(out), "0.3"], env, str(workdir),
                          tmp_path / "child.log", [str(secret)])
    assert pid != proc.pid
    assert _wait(lambda: out.exists())
    info = json.loads(out.read_text())
    assert info["marker"] == "from-the-caller" and info["cwd"] == str(workdir)
    assert info["sid"] == pid  # its own session: a signal to the launcher's group spares it
    assert _wait(lambda: not alive(pid))
    assert _wait(lambda: not secret.exists()), "the settings snapshot outlived the run"
    assert "probe says hello" in (tmp_path / "child.log").read_text()
    assert "ended (status 768)" in (folder / "launcher.log").read_text()  # exit code 3


def test_locked_descriptor_travels_with_the_run(tmp_path, warm, probe_env):
    """The caller's flock is held by the child from the first instant: no second run between."""
    folder, _ = warm
    lock_file = tmp_path / "feedback-7.lock"
    fd = trigger._try_lock(lock_file)
    out = tmp_path / "out.json"
    pid = launcher.launch(folder, "launcher_probe", [str(out), "1.5"], probe_env, os.getcwd(),
                          tmp_path / "child.log", [], lock_fd=fd)
    os.close(fd)  # the caller lets go at once, as the trigger does
    assert trigger._try_lock(lock_file) is None, "nobody held the lock after the caller let go"
    assert _wait(lambda: out.exists())
    assert _wait(lambda: not alive(pid))
    again = trigger._try_lock(lock_file)
    assert again is not None, "the lock stayed held after the run ended"
    os.close(again)


def test_other_environment_is_refused_not_run(tmp_path, warm, probe_env):
    folder, _ = warm
    env = dict(probe_env, ZENML_CONFIG_PATH=str(tmp_path / "another-zenml"))
    with pytest.raises(launcher.LauncherUnavailable, match="ZENML_CONFIG_PATH"):
        launcher.launch(folder, "launcher_probe", [str(tmp_path / "o"), "0"], env, os.getcwd(),
                        tmp_path / "child.log", [])
    assert not (tmp_path / "o").exists()


def test_caller_without_labelloops_defaults_is_the_same_environment(tmp_path, warm, probe_env):
    """Regression: a caller that had not imported labelloop yet (the GPU benchmark) sent an
    environment without the telemetry defaults that `import labelloop` sets, and was refused."""
    from labelloop import OFFLINE_ENV

    folder, _ = warm
    env = {k: v for k, v in probe_env.items() if k not in OFFLINE_ENV}
    out = tmp_path / "out.json"
    pid = launcher.launch(folder, "launcher_probe", [str(out), "0"], env, os.getcwd(),
                          tmp_path / "child.log", [])
    assert _wait(lambda: out.exists()) and _wait(lambda: not alive(pid))
    assert json.loads(out.read_text())["hub_offline"] == "1"  # the child stays offline


def test_no_launcher_is_unavailable(tmp_path):
    with pytest.raises(launcher.LauncherUnavailable):
        launcher.launch(tmp_path, "launcher_probe", [], {}, os.getcwd(), tmp_path / "l", [])


def test_launcher_exits_with_the_process_it_watches(tmp_path, probe_env):
    folder = tmp_path / "fb"
    folder.mkdir()
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelloop.launcher", "--dir", str(folder), "--watch-pid",
         str(watched.pid), "--preload", "json"], env=probe_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait(lambda: launcher.socket_path(folder).exists())
    second = subprocess.run(  # one launcher per data dir
        [sys.executable, "-m", "labelloop.launcher", "--dir", str(folder), "--preload", "json"],
        env=probe_env, capture_output=True, text=True, timeout=60)
    assert "another launcher serves this data dir" in second.stdout
    watched.kill()
    watched.wait()
    assert proc.wait(timeout=15) == 0
    assert not launcher.socket_path(folder).exists()
    assert not launcher.is_running(folder)


def test_trigger_starts_the_turn_through_the_launcher(tmp_path, warm, probe_env, monkeypatch):
    """request_feedback_run hands the turn and its lock to the warm launcher; the turn adopts
    the lock (a second request meanwhile is refused), and the snapshot goes when it ends."""
    folder, proc = warm
    settings = Settings(data_dir=str(tmp_path))
    assert trigger.feedback_dir(settings) == folder
    out = tmp_path / "out.json"
    monkeypatch.setattr(trigger, "FEEDBACK_MODULE", "launcher_probe")
    monkeypatch.setattr(trigger, "feedback_command",
                        lambda config, project, reason: [sys.executable, "-m", "probe", str(out),
                                                         "1.5", "adopt"])
    for key, value in probe_env.items():
        monkeypatch.setenv(key, value)
    assert trigger.request_feedback_run(settings, 7, "test") is True
    assert _wait(lambda: out.exists())
    info = json.loads(out.read_text())
    assert info["adopted"] and info["pid"] != proc.pid
    assert trigger.running_info(settings, 7)["launcher"] is True
    assert trigger.request_feedback_run(settings, 7, "test again") is False
    assert _wait(lambda: not alive(info["pid"]))
    assert _wait(lambda: not list(folder.glob("settings-7-*.yaml")))
    assert trigger.running_info(settings, 7) is None


def test_trigger_without_launcher_runs_plain_and_starts_one(tmp_path, monkeypatch):
    settings = Settings(data_dir=str(tmp_path))
    started = []
    monkeypatch.setattr(launcher, "start_detached",
                        lambda folder, pid, idle, env=None: started.append((folder, pid)))
    out = tmp_path / "plain"
    monkeypatch.setattr(trigger, "feedback_command", lambda c, p, r: [
        sys.executable, "-c", f"open({str(out)!r}, 'w').write('ran')"])
    assert trigger.request_feedback_run(settings, 3, "test") is True
    assert _wait(lambda: out.exists()) and out.read_text() == "ran"
    assert started == [(trigger.feedback_dir(settings), os.getpid())]
