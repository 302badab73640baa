"""A local Argilla server, started for real: `labelloop argilla up|down|status`.

argilla-server 2.8 pins its own FastAPI/pydantic and its CLI needs `click<8.2` (which zenml's
does not allow), so it lives in its own virtualenv (`argilla.venv`, default
`~/.cache/labelloop/argilla-server-venv`), created the first time it is needed. It needs a search
engine speaking Elasticsearch's protocol and a Redis; `noida-db` (one small binary from PyPI,
installed into the same venv) serves both on 127.0.0.1. Three processes then, each in its own
process group with a pid file under `<data_dir>/argilla/`:

    noida-db            Elasticsearch protocol on argilla.search_port, Redis on argilla.redis_port
    argilla_server      the API and UI on argilla.host:argilla.port (SQLite database in home/)
    argilla_server worker   rq worker: delivers the webhooks

`up` migrates the database (idempotent), creates the owner user, its workspace and API key
non-interactively the first time (the key is `argilla.api_key`, or generated once into
`<data_dir>/argilla/api_key`, mode 0600), starts the server and waits for /api/v1/version. `down`
stops all three (SIGTERM to each group, SIGKILL after a timeout), leaving no process behind.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import labelloop  # noqa: F401  (offline/telemetry switches)
from annotation import side_server as side
from annotation.side_server import Progress
from labelloop.processes import alive
from labelloop.settings import Settings, load_settings

DEFAULT_VENV = Path("~/.cache/labelloop/argilla-server-venv")
# click<8.2: argilla-server's typer CLI fails on click 8.2's flag checks ("Secondary flag is not
# valid for non-boolean flag"); huggingface-hub<1 is the last that accepts that click.
REQUIREMENTS = ("argilla-server==2.8.0", "click<8.2", "huggingface-hub<1", "noida-db==0.2.3")
PROCESSES = ("noida", "server", "worker")  # started in this order, stopped in reverse


class ArgillaServerError(RuntimeError):
    """The Argilla server could not be installed, started, reached or stopped."""


def _say(msg: str) -> None:
    print(f"[argilla] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ArgillaPaths:
    venv: Path
    data_dir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def noida(self) -> Path:
        return self.venv / "bin" / "noida-db"

    @property
    def home(self) -> Path:
        return self.data_dir / "home"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "api_key"

    @property
    def owner_marker(self) -> Path:
        return self.data_dir / "owner-created"

    def pid_file(self, name: str) -> Path:
        return self.data_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.data_dir / f"{name}.log"


def paths(settings: Settings) -> ArgillaPaths:
    return ArgillaPaths(venv=side.venv_path(settings.argilla.venv, DEFAULT_VENV),
                        data_dir=settings.data_path / "argilla")


def url(settings: Settings) -> str:
    return f"http://{settings.argilla.host}:{settings.argilla.port}"


def api_key(settings: Settings, create: bool = False) -> str:
    """The owner's API key: from settings, else the generated one under the data dir."""
    if settings.argilla.api_key:
        return settings.argilla.api_key
    key_file = paths(settings).key_file
    if not create and not key_file.is_file():
        raise ArgillaServerError(
            f"no Argilla API key: set argilla.api_key, or run `labelloop argilla up` once (it "
            f"generates one in {key_file})")
    return side.stored_secret(key_file, lambda: "labelloop." + secrets.token_urlsafe(24))


# -- install ---------------------------------------------------------------------------------

def ensure_installed(settings: Settings, progress: Progress = _say) -> ArgillaPaths:
    """argilla-server and noida-db in their own venv, installed (once) if missing."""
    p = paths(settings)
    if p.python.is_file() and p.noida.is_file() and _has_server(p):
        return p
    progress(f"argilla-server is not installed in {p.venv}; installing it there "
             "(one time, about a minute, about 600 MB)")
    side.install(p.venv, REQUIREMENTS, "argilla-server", ArgillaServerError)
    if not (p.noida.is_file() and _has_server(p)):
        raise ArgillaServerError(f"pip finished but argilla-server/noida-db are missing in {p.venv}")
    progress("argilla-server installed")
    return p


def _has_server(p: ArgillaPaths) -> bool:
    return any(p.venv.glob("lib/python3*/site-packages/argilla_server/__init__.py"))


# -- processes -------------------------------------------------------------------------------
def _read_pid(p: ArgillaPaths, name: str) -> Optional[int]:
    return side.read_pid(p.pid_file(name), (str(p.venv).encode(),))


def server_env(settings: Settings) -> dict[str, str]:
    a = settings.argilla
    p = paths(settings)
    env = side.clean_env()
    env.update(labelloop.OFFLINE_ENV)
    env.update({
        "ARGILLA_HOME_PATH": str(p.home),
        "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{p.home / 'argilla.db'}?check_same_thread=False",
        "ARGILLA_SEARCH_ENGINE": "elasticsearch",
        "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{a.search_port}",
        "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{a.redis_port}/0",
        "ARGILLA_BASE_URL": "/",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ARGILLA_SHOW_HUGGINGFACE_SPACE_PERSISTENT_STORAGE_WARNING": "false",
        # The service's webhook endpoint is on 127.0.0.1: no proxy may stand in between.
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    return env


def _spawn(settings: Settings, name: str, cmd: list[str]) -> int:
    p = paths(settings)
    return side.spawn(cmd, p.data_dir, server_env(settings), p.log_file(name), p.pid_file(name)).pid


def _run(settings: Settings, args: list[str], what: str, timeout: float = 180.0) -> str:
    p = paths(settings)
    try:
        done = subprocess.run([str(p.python), "-m", "argilla_server", *args], cwd=str(p.data_dir),
                              env=server_env(settings), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ArgillaServerError(f"{what} took over {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise ArgillaServerError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def is_ready(base_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/api/v1/version", timeout=timeout) as resp:
            return resp.status == 200 and b"version" in resp.read()
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait(check: Callable[[], bool], settings: Settings, name: str, pid: int, timeout: float,
          progress: Progress, what: str) -> None:
    side.wait_until(check, lambda: alive(pid), timeout, progress, what,
                    paths(settings).log_file(name), ArgillaServerError, poll=0.3)


@dataclass(frozen=True)
class ArgillaServer:
    url: str
    api_key: str
    username: str
    password: str
    workspace: str
    data_dir: str

    def argilla_overrides(self) -> dict:
        """Settings overrides ({"argilla": {...}}) pointing at this server."""
        return {"argilla": {"host": self.url.rsplit("//", 1)[1].rsplit(":", 1)[0],
                            "port": int(self.url.rsplit(":", 1)[1]), "api_key": self.api_key,
                            "username": self.username, "password": self.password,
                            "workspace": self.workspace}}


def _server(settings: Settings) -> ArgillaServer:
    a = settings.argilla
    return ArgillaServer(url=url(settings), api_key=api_key(settings), username=a.username,
                         password=a.password, workspace=a.workspace,
                         data_dir=str(paths(settings).data_dir))


def start(settings: Settings, timeout: float = 180.0, progress: Progress = _say) -> ArgillaServer:
    """Start noida-db, argilla-server and its worker (installing them first if needed) and wait
    until the API answers. Idempotent: what already runs is kept."""
    a = settings.argilla
    base = url(settings)
    p = paths(settings)
    running = {name: _read_pid(p, name) for name in PROCESSES}
    if all(running.values()) and is_ready(base):
        progress(f"Argilla already running at {base}")
        return _server(settings)
    # Ports someone else holds: a clear error before anything is started.
    for name, key, host in (("noida", "search_port", "127.0.0.1"),
                            ("noida", "redis_port", "127.0.0.1"), ("server", "port", a.host)):
        port = getattr(a, key)
        if running[name] is None and side.port_open(host, port):
            raise ArgillaServerError(
                f"port {port} on {host} is in use by a process labelloop did not start; stop it "
                f"or set argilla.{key} to a free port")
    ensure_installed(settings, progress)
    p.home.mkdir(parents=True, exist_ok=True)
    key = api_key(settings, create=True)
    started = time.monotonic()
    try:
        if running["noida"] is None:
            progress(f"starting noida-db (search :{a.search_port}, redis :{a.redis_port})")
            pid = _spawn(settings, "noida", [
                str(p.noida), "start", "--data-dir", str(p.data_dir / "noida"),
                "--host", "127.0.0.1", "--only", "redis,elasticsearch",
                "--redis-port", str(a.redis_port), "--elasticsearch-port", str(a.search_port)])
            _wait(lambda: side.port_open("127.0.0.1", a.search_port)
                  and side.port_open("127.0.0.1", a.redis_port),
                  settings, "noida", pid, 60, progress, "noida-db")
        if running["server"] is None:
            progress("migrating Argilla's database")
            _run(settings, ["database", "migrate"], "argilla-server database migrate")
            if not p.owner_marker.is_file():
                progress(f"creating the owner {a.username!r} and workspace {a.workspace!r}")
                _run(settings, ["database", "users", "create", "--first-name", "labelloop",
                                "--username", a.username, "--password", a.password,
                                "--role", "owner", "--api-key", key, "--workspace", a.workspace],
                     "creating Argilla's owner user")
                p.owner_marker.write_text(a.username + "\n")
            progress(f"starting Argilla at {base} (data in {p.data_dir})")
            pid = _spawn(settings, "server", [str(p.python), "-m", "argilla_server", "start",
                                              "--host", a.host, "--port", str(a.port)])
            _wait(lambda: is_ready(base), settings, "server", pid, timeout, progress,
                  f"{base}/api/v1/version")
        else:  # started by an earlier `up` that has not seen it ready yet
            _wait(lambda: is_ready(base), settings, "server", running["server"], timeout,
                  progress, f"{base}/api/v1/version")
        if running["worker"] is None:
            _spawn(settings, "worker", [str(p.python), "-m", "argilla_server", "worker",
                                        "--num-workers", "1"])
    except BaseException:
        stop(settings, progress=progress)
        raise
    (p.data_dir / "server.json").write_text(json.dumps({"url": base, "started_at": time.time()}))
    progress(f"Argilla is up at {base} after {time.monotonic() - started:.0f}s "
             f"(login {a.username})")
    return _server(settings)


def stop(settings: Settings, timeout: float = 20.0, progress: Progress = _say) -> bool:
    """Stop the worker, the server and noida-db (SIGTERM to each group, then SIGKILL)."""
    p = paths(settings)
    stopped = False
    for name in reversed(PROCESSES):
        pid = _read_pid(p, name)
        if pid is None:
            p.pid_file(name).unlink(missing_ok=True)
            continue
        stopped = True
        # The whole group goes: noida-db's launcher execs a child, rq forks workers.
        side.stop_pid(pid, name, timeout, progress)
        p.pid_file(name).unlink(missing_ok=True)
    progress("Argilla stopped" if stopped else "Argilla is not running")
    return stopped


def status(settings: Settings) -> dict:
    p = paths(settings)
    base = url(settings)
    return {"url": base, "ready": is_ready(base),
            **{f"{name}_pid": _read_pid(p, name) for name in PROCESSES},
            "installed": p.noida.is_file() and _has_server(p), "venv": str(p.venv),
            "data_dir": str(p.data_dir), "username": settings.argilla.username}


def main(args) -> int:
    settings = load_settings(getattr(args, "config", None))
    action = args.action
    try:
        if action == "up":
            server = start(settings)
            print(f"Argilla: {server.url}")
            print(f"  login:   {server.username} / (argilla.password)")
            print("  API key: argilla.api_key" if settings.argilla.api_key
                  else f"  API key: in {paths(settings).key_file}")
            return 0
        if action == "down":
            stop(settings)
            return 0
        if action == "status":
            info = status(settings)
            print(json.dumps(info, indent=2))
            return 0 if info["ready"] else 1
    except ArgillaServerError as exc:
        print(f"labelloop argilla {action}: error: {exc}", file=sys.stderr)
        return 2
    raise SystemExit(f"unknown action {action!r}")


def cli(args) -> int:
    """`labelloop argilla up|down|status|setup|log|sync|push`."""
    if args.action in ("up", "down", "status"):
        return main(args)
    from annotation import argilla as A

    settings = load_settings(getattr(args, "config", None))
    if args.action == "setup":
        out = A.setup(settings, progress=lambda m: print(m, file=sys.stderr))
    elif args.action == "log":
        out = A.log_pool(settings)
    elif args.action == "push":
        out = A.push_suggestions(settings)
    elif args.action == "sync":
        out = A.sync_dataset(settings)
        from annotation.agreement import log_agreement  # MLflow: only once there is something

        out["agreement"] = log_agreement(settings, source="argilla")["versions"]
    else:
        raise SystemExit(f"unknown action {args.action!r}")
    print(json.dumps(out, indent=2, default=str))
    return 0
