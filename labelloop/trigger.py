"""Starting the feedback pipeline from anywhere (webhook, CLI), never twice for one project.

One lock file per project under `<data_dir>/feedback/`, held with `fcntl.flock` for as long as a
feedback run lives. `request_feedback_run` takes the lock itself, then starts
`python -m labelloop.cli feedback --project N --reason R` detached and hands it the locked file
descriptor (its number in `LABELLOOP_FEEDBACK_LOCK_FD`), so there is no window between "started"
and "holding the lock" in which a second trigger could start a second run. The kernel drops the
lock when the run exits, however it exits. The pipeline wraps its work in
`feedback_lock(settings, project)`, which adopts the inherited lock, or takes it when the run was
started by hand, and raises `FeedbackRunning` if another run holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from labelloop.settings import Settings

# The module whose main(argv) runs a turn in the warm launcher (tests swap in a probe).
FEEDBACK_MODULE = "labelloop.cli"
LOCK_FD_ENV = "LABELLOOP_FEEDBACK_LOCK_FD"
LOCK_PATH_ENV = "LABELLOOP_FEEDBACK_LOCK_PATH"

# The triggers that are a person asking for a turn now; a turn then trains on any new trainable
# label (pipelines/steps/feedback_decide.py). A trigger may carry more after these words.
START_TRAINING_BUTTON = "label-studio: start training"  # Label Studio's Start training
CLI_ASKED_TO_TRAIN = "cli: asked to train"              # labelloop feedback --train
ASKED_TO_TRAIN = (START_TRAINING_BUTTON, CLI_ASKED_TO_TRAIN)


class FeedbackRunning(RuntimeError):
    """A feedback run for this project is already in progress."""


def feedback_dir(settings: Settings) -> Path:
    path = settings.data_path / "feedback"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lock_path(settings: Settings, project_id: Any) -> Path:
    name = "all" if project_id is None else str(project_id)
    return feedback_dir(settings) / f"feedback-{name}.lock"


def _try_lock(path: Path) -> Optional[int]:
    """An fd holding an exclusive flock on path, or None if someone else holds it."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _write_owner(fd: int, info: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def running_info(settings: Settings, project_id: Any) -> Optional[dict[str, Any]]:
    """What the running feedback run for the project wrote into its lock, or None if none runs."""
    path = lock_path(settings, project_id)
    fd = _try_lock(path)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return None
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def is_running(settings: Settings, project_id: Any) -> bool:
    return running_info(settings, project_id) is not None


def _settings_snapshot(settings: Settings, project_id: Any) -> Path:
    """The exact settings of the caller, for the child (0600: it may hold secrets). One file
    per run, removed when the run ends (see `_reap`)."""
    import tempfile

    data = settings.model_dump(mode="json")
    data["data_dir"] = str(settings.data_path)
    fd, name = tempfile.mkstemp(prefix=f"settings-{'all' if project_id is None else project_id}-",
                                suffix=".yaml", dir=feedback_dir(settings))  # mode 0600
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return Path(name)


def feedback_command(config_path: Path, project_id: Any, reason: str) -> list[str]:
    cmd = [sys.executable, "-m", "labelloop.cli", "feedback", "--config", str(config_path)]
    if project_id is not None:
        cmd += ["--project", str(project_id)]
    return cmd + ["--reason", reason]


def request_feedback_run(settings: Settings, project_id: Any, reason: str,
                         command: Optional[list[str]] = None) -> bool:
    """Start the feedback pipeline detached, unless one is running for the project.

    Returns True when a run was started, False when one was already running. `command`
    replaces the pipeline command (tests); it gets the same environment and lock.
    """
    path = lock_path(settings, project_id)
    fd = _try_lock(path)
    if fd is None:
        return False
    try:
        config_path = _settings_snapshot(settings, project_id)
        cmd = command or feedback_command(config_path, project_id, reason)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        log_path = feedback_dir(settings) / f"feedback-{project_id or 'all'}-{stamp}.log"
        env = dict(os.environ)
        env[LOCK_PATH_ENV] = str(path)
        env["LABELLOOP_CONFIG"] = str(config_path)
        if command is None and settings.feedback.warm_launcher:
            pid = _launch_warm(settings, cmd, env, log_path, config_path, fd)
            if pid is not None:
                _write_owner(fd, {"pid": pid, "project": project_id, "reason": reason,
                                  "started_at": time.time(), "log": str(log_path),
                                  "launcher": True})
                return True
        env[LOCK_FD_ENV] = str(fd)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=os.getcwd(), start_new_session=True, pass_fds=(fd,),
                close_fds=True,
            )
        _write_owner(fd, {
            "pid": proc.pid, "project": project_id, "reason": reason,
            "started_at": time.time(), "log": str(log_path),
        })
        # Reap the child when it ends (else it stays a zombie until this process exits) and
        # remove the settings snapshot, which may hold secrets, as soon as nobody needs it.
        threading.Thread(target=_reap, args=(proc, config_path), daemon=True,
                         name=f"labelloop-feedback-reaper-{proc.pid}").start()
    finally:
        # The child holds its own copy of the locked descriptor; ours goes.
        os.close(fd)
    return True


def _launch_warm(settings: Settings, cmd: list[str], env: dict[str, str], log_path: Path,
                 config_path: Path, fd: int) -> Optional[int]:
    """The turn as a child of the warm launcher (imports already paid); None when no launcher
    can take it, in which case one is started for the next turn and this one runs as a plain
    process."""
    from labelloop import launcher

    folder = feedback_dir(settings)
    try:
        return launcher.launch(folder, FEEDBACK_MODULE, cmd[3:], env, os.getcwd(), log_path,
                               [str(config_path)], lock_fd=fd)
    except launcher.LauncherUnavailable:
        ensure_launcher(settings)
        return None


def ensure_launcher(settings: Settings) -> None:
    """Have a warm launcher for this data dir (started in the background, watching this
    process); a no-op when one runs or `feedback.warm_launcher` is off."""
    if not settings.feedback.warm_launcher:
        return
    from labelloop import launcher

    try:
        launcher.start_detached(feedback_dir(settings), os.getpid(),
                                settings.feedback.launcher_idle_s)
    except OSError:
        pass  # turns then start as plain processes, as before


def _reap(proc: subprocess.Popen, snapshot: Path) -> None:
    try:
        proc.wait()
    finally:
        try:
            snapshot.unlink()
        except OSError:
            pass


@contextmanager
def feedback_lock(settings: Settings, project_id: Any, reason: str | None = None) -> Iterator[Path]:
    """Hold the project's feedback lock for the duration; `FeedbackRunning` if another holds it.

    A run started by `request_feedback_run` inherits the lock already held and adopts it.
    """
    path = lock_path(settings, project_id)
    inherited = os.environ.get(LOCK_FD_ENV)
    if inherited and os.environ.get(LOCK_PATH_ENV) == str(path):
        fd = int(inherited)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            os.environ.pop(LOCK_FD_ENV, None)  # nested calls and grandchildren take it anew
            os.environ.pop(LOCK_PATH_ENV, None)
            try:
                yield path
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
    fd = _try_lock(path)
    if fd is None:
        info = running_info(settings, project_id) or {}
        raise FeedbackRunning(
            f"a feedback run for project {project_id} is already running "
            f"(pid {info.get('pid', '?')}, reason {info.get('reason', '?')!r}, lock {path})"
        )
    try:
        _write_owner(fd, {"pid": os.getpid(), "project": project_id, "reason": reason,
                          "started_at": time.time()})
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
