"""What the two local annotation servers have in common: Label Studio (annotation/studio.py) and
Argilla (annotation/argilla_server.py) each live in a virtualenv of their own (their pins clash
with the project's), run as processes in their own process groups with pid files under the data
dir, and are waited for until they answer. One copy of those mechanics, here:

- `clean_env()`: this process's environment without the project venv leaking into theirs;
- `venv_path` / `install`: the server's own virtualenv, created and filled with pip once;
- `stored_secret`: a generated token kept in a 0600 file under the data dir;
- `spawn` / `read_pid` / `wait_until` / `stop_pid`: start, find, wait for and stop a process;
- `reachable`: the clients' fail-fast check that something listens before the SDKs (which retry
  a dead server for seconds) are asked anything.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from labelloop.processes import alive

Progress = Callable[[str], None]
# Not passed on to the servers: they must run on their own venv (and Label Studio's own Django).
LEAKING_VARIABLES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")


def clean_env() -> dict[str, str]:
    """This process's environment without the project venv leaking into a server's."""
    env = dict(os.environ)
    for key in LEAKING_VARIABLES:
        env.pop(key, None)
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


# -- the server's own virtualenv -----------------------------------------------------------------
def venv_path(configured: Optional[str], default: Path) -> Path:
    return (Path(configured).expanduser() if configured else default.expanduser()).resolve()


def install(venv: Path, requirements: Sequence[str], what: str,
            error: type[Exception]) -> None:
    """Create `venv` (if it has no python yet) and pip-install `requirements` into it;
    `error(...)` naming `what` if either fails."""
    python = venv / "bin" / "python"
    try:
        if not python.is_file():
            venv.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = clean_env()
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                       check=True, env=env)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements],
                       check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise error(f"installing {what} into {venv} failed: {exc}") from exc


def stored_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path`, made (by `make`) and written 0600 the first time."""
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


# -- processes -------------------------------------------------------------------------------------
def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def spawn(cmd: Sequence[str], cwd: Path, env: dict[str, str], log_file: Path,
          pid_file: Path) -> subprocess.Popen:
    """`cmd` in its own session (its pid is its process group: `stop_pid` stops its children
    too), output appended to `log_file`, its pid written to `pid_file`."""
    log = open(log_file, "ab")
    try:
        proc = subprocess.Popen(list(cmd), cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def read_pid(pid_file: Path, marks: Sequence[bytes]) -> Optional[int]:
    """The pid in `pid_file` while that process runs and its command line holds one of `marks`
    (a recycled pid is not ours); None otherwise."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if any(mark in cmdline for mark in marks) else None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(check: Callable[[], bool], running: Callable[[], bool], timeout: float,
               progress: Progress, what: str, log_file: Path, error: type[Exception],
               poll: float = 0.5, on_timeout: Optional[Callable[[], None]] = None) -> float:
    """Seconds until `check()` holds; `error` with the log's last lines if the process stops
    `running()` first or `timeout` passes (after `on_timeout()`, e.g. stopping it). A line
    every 5 s says it is still waiting."""
    started = time.monotonic()
    last = 0.0
    while not check():
        if not running():
            raise error(f"{what} exited during startup; last lines of {log_file}:\n"
                        + tail(log_file))
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            if on_timeout is not None:
                on_timeout()
            raise error(f"{what} did not come up within {timeout:.0f}s; last lines of "
                        f"{log_file}:\n" + tail(log_file))
        if elapsed - last >= 5:
            progress(f"waiting for {what} ... {elapsed:.0f}s")
            last = elapsed
        time.sleep(poll)
    return time.monotonic() - started


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started by `spawn`: its pid is its group
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_pid(pid: int, name: str, timeout: float, progress: Progress) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after `timeout` (a launcher
    that exec'd a child, forked workers: the whole group goes). Reaps our own child."""
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        progress(f"{name} (pid {pid}) did not stop in time; killing it")
    signal_group(pid, signal.SIGKILL)
    time.sleep(0.1)
    alive(pid)  # reaps our own child


# -- clients -----------------------------------------------------------------------------------------
def reachable(host: str, port: int, error: type[Exception], down: str,
              timeout: float = 1.0) -> None:
    """`error(down + the reason)` unless something accepts a connection at host:port. The
    clients call it first: the SDKs retry a server that is down for seconds per call."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise error(f"{down} ({type(exc).__name__}: {exc})") from None
