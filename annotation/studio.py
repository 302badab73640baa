"""A local Label Studio server, started for real: `labelloop studio up|down|status`.

Label Studio pins its own Django, pandas and numpy, so it lives in its own virtualenv
(`studio.venv`, default `~/.cache/labelloop/label-studio-venv`), created and filled with
`pip install label-studio` the first time it is needed. The server keeps its SQLite database and
media under `<data_dir>/label-studio/`, binds to `studio.host:studio.port` only, and gets its admin
user and legacy API token non-interactively: the token is `studio.api_token` when set, otherwise
one is generated once and kept in `<data_dir>/label-studio/api_token` (mode 0600).
Label Studio creates that user (and token) only on the FIRST start of a data dir.

`start(settings)` / `stop(settings)` / `status(settings)` are what the CLI and the tests use.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import labelloop  # noqa: F401  (offline/telemetry switches, incl. Label Studio's)
from annotation import side_server as side
from annotation.side_server import Progress
from labelloop.settings import Settings, load_settings

DEFAULT_VENV = Path("~/.cache/labelloop/label-studio-venv")
LABEL_STUDIO_REQUIREMENT = os.environ.get("LABELLOOP_LABEL_STUDIO_REQUIREMENT", "label-studio")


class StudioError(RuntimeError):
    """Label Studio could not be installed, started, reached or stopped."""


def _say(msg: str) -> None:
    print(f"[studio] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StudioPaths:
    venv: Path
    data_dir: Path
    pid_file: Path
    log_file: Path
    token_file: Path
    info_file: Path

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"


def paths(settings: Settings) -> StudioPaths:
    data = settings.data_path / "label-studio"
    return StudioPaths(
        venv=side.venv_path(settings.studio.venv, DEFAULT_VENV), data_dir=data, pid_file=data / "label-studio.pid",
        log_file=data / "label-studio.log", token_file=data / "api_token",
        info_file=data / "server.json",
    )


def url(settings: Settings) -> str:
    return f"http://{settings.studio.host}:{settings.studio.port}"


def api_token(settings: Settings, create: bool = False) -> str:
    """The admin's legacy API token: from settings, else the generated one under the data dir."""
    if settings.studio.api_token:
        return settings.studio.api_token
    token_file = paths(settings).token_file
    if not create and not token_file.is_file():
        raise StudioError(
            f"no Label Studio API token: set studio.api_token, or run `labelloop studio up` "
            f"once (it generates one in {token_file})"
        )
    # 40 characters, like Label Studio's own tokens
    return side.stored_secret(token_file, lambda: secrets.token_hex(20))


# -- install ---------------------------------------------------------------------------------
def ensure_installed(settings: Settings, progress: Progress = _say) -> Path:
    """The `label-studio` executable, installing Label Studio into its own venv if missing."""
    p = paths(settings)
    if p.executable.is_file():
        return p.executable
    progress(f"Label Studio is not installed in {p.venv}; installing it there "
             "(one time, about 2 minutes, about 1 GB)")
    side.install(p.venv, [LABEL_STUDIO_REQUIREMENT], "Label Studio", StudioError)
    if not p.executable.is_file():
        raise StudioError(f"pip finished but {p.executable} does not exist")
    progress("Label Studio installed")
    return p.executable


# -- health / process --------------------------------------------------------------------------
def is_healthy(base_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout) as resp:
            return resp.status == 200 and b"UP" in resp.read()
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_pid(p: StudioPaths) -> Optional[int]:
    return side.read_pid(p.pid_file, (b"label-studio", b"label_studio"))


@dataclass(frozen=True)
class StudioServer:
    url: str
    token: str
    username: str
    password: str
    pid: Optional[int]
    data_dir: str
    log_file: str

    def studio_overrides(self) -> dict:
        """Settings overrides ({"studio": {...}}) pointing at this server."""
        host, port = self.url.rsplit("//", 1)[1].rsplit(":", 1)
        return {"studio": {"host": host, "port": int(port), "api_token": self.token,
                           "username": self.username, "password": self.password}}


def _server(settings: Settings, pid: Optional[int]) -> StudioServer:
    p = paths(settings)
    return StudioServer(
        url=url(settings), token=api_token(settings), username=settings.studio.username,
        password=settings.studio.password, pid=pid, data_dir=str(p.data_dir),
        log_file=str(p.log_file),
    )


def studio_env(settings: Settings, token: str) -> dict[str, str]:
    p = paths(settings)
    env = side.clean_env()
    env.update(labelloop.OFFLINE_ENV)
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(p.data_dir),
        "LABEL_STUDIO_USERNAME": settings.studio.username,
        "LABEL_STUDIO_PASSWORD": settings.studio.password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # The ML backend and the webhook receiver are the labelloop service on 127.0.0.1.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
    })
    return env


def start(settings: Settings, timeout: float = 240.0, progress: Progress = _say) -> StudioServer:
    """Start Label Studio (installing it first if needed) and wait for /health. Idempotent."""
    p = paths(settings)
    base = url(settings)
    pid = _read_pid(p)
    if pid is not None:
        if is_healthy(base):
            progress(f"Label Studio already running at {base} (pid {pid})")
            return _server(settings, pid)
        progress(f"a Label Studio process (pid {pid}) exists but {base} is not healthy yet")
        return _wait_healthy(settings, pid, timeout, progress)
    if side.port_open(settings.studio.host, settings.studio.port, timeout=1.0):
        if is_healthy(base):
            raise StudioError(
                f"a Label Studio that labelloop did not start already answers at {base}; stop it "
                "or set studio.port to another port")
        raise StudioError(f"port {settings.studio.port} on {settings.studio.host} is in use; "
                          "set studio.port to a free port")
    exe = ensure_installed(settings, progress)
    p.data_dir.mkdir(parents=True, exist_ok=True)
    token = api_token(settings, create=True)
    cmd = [
        str(exe), "start", "--no-browser",
        "--port", str(settings.studio.port),
        "--host", base,
        "--internal-host", settings.studio.host,
        "--data-dir", str(p.data_dir),
    ]  # user, password and token travel in the environment (not visible in `ps`)
    progress(f"starting Label Studio at {base} (data in {p.data_dir}, log {p.log_file})")
    proc = side.spawn(cmd, p.data_dir, studio_env(settings, token), p.log_file, p.pid_file)
    p.info_file.write_text(json.dumps({"pid": proc.pid, "url": base, "started_at": time.time(),
                                       "venv": str(p.venv)}))
    return _wait_healthy(settings, proc.pid, timeout, progress, proc)


def _wait_healthy(settings: Settings, pid: int, timeout: float, progress: Progress,
                  proc: Optional[subprocess.Popen] = None) -> StudioServer:
    p = paths(settings)
    base = url(settings)

    def running() -> bool:
        return proc.poll() is None if proc is not None else _read_pid(p) is not None

    try:
        took = side.wait_until(lambda: is_healthy(base), running, timeout, progress,
                               f"Label Studio ({base}/health)", p.log_file, StudioError,
                               on_timeout=lambda: stop(settings, progress=progress))
    except StudioError:
        p.pid_file.unlink(missing_ok=True)
        raise
    progress(f"Label Studio is up at {base} after {took:.0f}s (login {settings.studio.username})")
    return _server(settings, pid)


def stop(settings: Settings, timeout: float = 30.0, progress: Progress = _say) -> bool:
    """Stop the server this data dir's pid file names (SIGTERM, then SIGKILL). True if stopped."""
    p = paths(settings)
    pid = _read_pid(p)
    if pid is None:
        p.pid_file.unlink(missing_ok=True)
        progress("Label Studio is not running")
        return False
    progress(f"stopping Label Studio (pid {pid})")
    side.stop_pid(pid, "Label Studio", timeout, progress)
    p.pid_file.unlink(missing_ok=True)
    progress("Label Studio stopped")
    return True


def status(settings: Settings) -> dict:
    p = paths(settings)
    pid = _read_pid(p)
    base = url(settings)
    return {
        "url": base, "running": pid is not None, "pid": pid, "healthy": is_healthy(base),
        "installed": p.executable.is_file(), "venv": str(p.venv), "data_dir": str(p.data_dir),
        "log": str(p.log_file), "username": settings.studio.username,
    }


def main(args) -> int:
    settings = load_settings(getattr(args, "config", None))
    action = args.action
    try:
        if action == "up":
            server = start(settings)
            print(f"Label Studio: {server.url}")
            print(f"  login:    {server.username} / (studio.password)")
            print(f"  API token: in {paths(settings).token_file}" if not settings.studio.api_token
                  else "  API token: studio.api_token")
            return 0
        if action == "down":
            stop(settings)
            return 0
        if action == "status":
            info = status(settings)
            print(json.dumps(info, indent=2))
            return 0 if info["healthy"] else 1
    except StudioError as exc:
        print(f"labelloop studio {action}: error: {exc}", file=sys.stderr)
        return 2
    raise SystemExit(f"unknown action {action!r}")


__all__ = ["StudioError", "StudioServer", "api_token", "ensure_installed", "is_healthy",
           "main", "paths", "start", "status", "stop", "url"]
