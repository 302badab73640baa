"""A warm process that starts feedback turns without paying for Python's imports each time.

A turn started as a fresh `python -m labelloop.cli feedback` spends 6 s on a quiet 2-core box,
and 15-40 s on a busy one, importing torch, transformers, PEFT, ZenML and MLflow before it does
any work, and a second or more tearing them down (docs/benchmarks.md, "Loop turn"). The
launcher imports them once and then forks one child per turn, so a turn starts with everything
in memory. It is what `multiprocessing`'s forkserver does, with two things that one lacks: the
child gets the caller's environment, working directory, log file and the project's locked
feedback-lock descriptor (sent over the socket with SCM_RIGHTS, so the no-window locking of
`labelloop.trigger` is kept), and the launcher outlives the process that asked for it.

Protocol: a Unix socket `<data_dir>/feedback/launcher.sock` (mode 0600: only this user), one
JSON line per connection, `{"module", "argv", "env", "cwd", "log", "cleanup"}` plus at most one
descriptor, answered by `{"pid": N}` or `{"error": "..."}`. The child calls `module.main(argv)`
(a console script's entry point); the launcher reaps it and deletes `cleanup` (the settings
snapshot, which may hold secrets) when it ends.

Forking is safe here because the launcher only imports: no thread, no CUDA context, no open
store connection exists when it forks (checked at start; a launcher with a thread refuses to
serve). Values modules read from the environment at import time (ZenML's and MLflow's config
paths, telemetry switches) are fixed when the launcher starts, so a request whose environment
differs from the launcher's in those variables is refused and the caller starts a plain
process instead: never a turn with the wrong store.

Lifetime: one launcher per data dir (an flock on `launcher.lock`); it exits when the process
that started it (the service) is gone, or after `idle_s` without a request.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

# What a feedback turn imports: loaded once in the launcher, shared copy-on-write by children.
PRELOAD = ("labelloop.cli", "pipelines.run", "pipelines.feedback", "labelloop.training",
           "labelloop.challenger", "labelloop.evaluation", "annotation.labelstudio")

# Environment variables whose values modules may read at import: they must match the caller's.
_IMPORT_TIME_PREFIXES = ("ZENML_", "MLFLOW_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH",
                         "OMP_", "MKL_", "CUDA_", "PYTHON", "BENTOML_DO_NOT_TRACK", "DO_NOT_TRACK",
                         )
_PER_RUN = {"LABELLOOP_FEEDBACK_LOCK_FD", "LABELLOOP_FEEDBACK_LOCK_PATH", "LABELLOOP_CONFIG",
            "PYTHONUNBUFFERED"}
_MAX_REQUEST = 1 << 20


class LauncherUnavailable(RuntimeError):
    """No warm launcher can take this run (none running, or another environment)."""


def socket_path(feedback_dir: Path) -> Path:
    return feedback_dir / "launcher.sock"


def env_fingerprint(env: dict[str, str]) -> dict[str, str]:
    """The variables that must agree, as the child will see them once `import labelloop` has
    set its defaults (a caller that has not imported labelloop yet lacks them, and that is the
    same environment)."""
    from labelloop import OFFLINE_ENV

    env = {**OFFLINE_ENV, **env}
    return {k: v for k, v in env.items()
            if k.startswith(_IMPORT_TIME_PREFIXES) and k not in _PER_RUN}


# --- client side (the trigger) -------------------------------------------------------------

def launch(feedback_dir: Path, module: str, argv: list[str], env: dict[str, str], cwd: str,
           log: Path, cleanup: list[str], lock_fd: Optional[int] = None,
           timeout_s: float = 5.0) -> int:
    """Start `module` with `argv` in a child of the warm launcher; its pid. Raises
    LauncherUnavailable when there is no launcher or it cannot take the run."""
    path = socket_path(feedback_dir)
    if not path.exists():
        raise LauncherUnavailable("no launcher running")
    request = json.dumps({"module": module, "argv": argv, "env": env, "cwd": cwd,
                          "log": str(log), "cleanup": cleanup}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            socket.send_fds(sock, [request], [lock_fd] if lock_fd is not None else [])
            answer = _read_line(sock)
    except OSError as exc:
        raise LauncherUnavailable(f"launcher at {path} did not answer: {exc}") from None
    try:
        reply = json.loads(answer)
    except ValueError:
        raise LauncherUnavailable(f"launcher answered {answer[:200]!r}") from None
    if "pid" not in reply:
        raise LauncherUnavailable(reply.get("error", "launcher refused the run"))
    return int(reply["pid"])


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise OSError("message too long")
    return data


def start_detached(feedback_dir: Path, watch_pid: int, idle_s: float,
                   env: Optional[dict[str, str]] = None) -> Optional[subprocess.Popen]:
    """Start a launcher in the background (it imports for a few seconds, then listens), unless
    one already runs for this data dir. Never waits for it."""
    if is_running(feedback_dir):
        return None
    log = open(feedback_dir / "launcher.log", "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "labelloop.launcher", "--dir", str(feedback_dir),
             "--watch-pid", str(watch_pid), "--idle-s", str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env if env is not None else dict(os.environ), start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()


def is_running(feedback_dir: Path) -> bool:
    """Whether a launcher holds this data dir's launcher lock (starting or serving)."""
    fd = os.open(str(feedback_dir / "launcher.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# --- server side (the launcher process) ----------------------------------------------------

class Launcher:
    def __init__(self, feedback_dir: Path, watch_pid: Optional[int], idle_s: float,
                 preload: tuple[str, ...] = PRELOAD) -> None:
        self.dir = feedback_dir
        self.watch_pid = watch_pid
        self.idle_s = idle_s
        self.preload = preload
        self.fingerprint = env_fingerprint(dict(os.environ))
        self.children: dict[int, list[str]] = {}
        self.last_request = time.monotonic()
        self.lock_fd: Optional[int] = None

    def run(self) -> int:
        lock_fd = os.open(str(self.dir / "launcher.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print("launcher: another launcher serves this data dir; exiting", flush=True)
            return 0
        self.lock_fd = lock_fd
        t0 = time.perf_counter()
        import importlib

        for name in self.preload:
            importlib.import_module(name)
        if threading.active_count() != 1:
            names = [t.name for t in threading.enumerate()]
            print(f"launcher: imports started threads {names}; forking would be unsafe, "
                  "exiting (turns start as plain processes)", flush=True)
            return 1
        path = socket_path(self.dir)
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        server.listen(16)
        server.settimeout(1.0)
        print(f"launcher: pid {os.getpid()} ready in {time.perf_counter() - t0:.1f} s "
              f"({len(self.preload)} modules imported), socket {path}", flush=True)
        try:
            while self._keep_going():
                self._reap()
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    continue
                with conn:
                    self._serve(conn, server)
        finally:
            server.close()
            path.unlink(missing_ok=True)
        print("launcher: exiting", flush=True)
        return 0

    def _keep_going(self) -> bool:
        if self.watch_pid is not None:
            from labelloop.processes import alive

            if not alive(self.watch_pid):
                print(f"launcher: pid {self.watch_pid} (the service) is gone", flush=True)
                return False
        if not self.children and time.monotonic() - self.last_request > self.idle_s:
            print(f"launcher: idle for {self.idle_s:.0f} s", flush=True)
            return False
        return True

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                for name in self.children.pop(pid):
                    try:
                        os.unlink(name)
                    except OSError:
                        pass
                print(f"launcher: child {pid} ended (status {status})", flush=True)

    def _serve(self, conn: socket.socket, server: socket.socket) -> None:
        conn.settimeout(5.0)
        fds: list[int] = []
        try:
            msg, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 1)
            while not msg.endswith(b"\n") and len(msg) < _MAX_REQUEST:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                msg += chunk
            req = json.loads(msg)
            env = {str(k): str(v) for k, v in req["env"].items()}
            if env_fingerprint(env) != self.fingerprint:
                differ = sorted(set(env_fingerprint(env).items()) ^ set(self.fingerprint.items()))
                raise ValueError("environment differs from the launcher's in "
                                 f"{sorted({k for k, _ in differ})}")
            pid = self._fork(req, env, fds[0] if fds else None, server)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._answer(conn, {"error": f"{type(exc).__name__}: {exc}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.last_request = time.monotonic()
        self.children[pid] = [str(p) for p in req.get("cleanup", [])]
        print(f"launcher: started {req['module']} {' '.join(req['argv'])} as pid {pid}",
              flush=True)
        self._answer(conn, {"pid": pid})

    @staticmethod
    def _answer(conn: socket.socket, obj: dict[str, Any]) -> None:
        try:
            conn.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass

    def _fork(self, req: dict[str, Any], env: dict[str, str], lock_fd: Optional[int],
              server: socket.socket) -> int:
        log_fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        pid = os.fork()
        if pid:
            os.close(log_fd)
            return pid
        # The child: a new session, the caller's world, then the module as __main__.
        code = 1
        try:
            server.close()
            if self.lock_fd is not None:
                os.close(self.lock_fd)  # a turn must not keep the launcher's own lock
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            os.chdir(req["cwd"])
            if lock_fd is not None:
                os.set_inheritable(lock_fd, True)  # the turn's own children see it as today
                env["LABELLOOP_FEEDBACK_LOCK_FD"] = str(lock_fd)
            from labelloop import OFFLINE_ENV

            os.environ.clear()
            os.environ.update({**OFFLINE_ENV, **env})  # as `import labelloop` would leave it
            code = _run_module(req["module"], list(req["argv"]))
        except BaseException:  # noqa: BLE001 - the child reports and exits, never returns
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def _run_module(module: str, argv: list[str]) -> int:
    """`module.main(argv)`, as its console script would call it (the module is usually preloaded,
    so it is not re-executed as __main__)."""
    import importlib

    sys.argv = [module] + argv
    try:
        return int(importlib.import_module(module).main(argv) or 0)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelloop.launcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="the data dir's feedback folder")
    parser.add_argument("--watch-pid", type=int, default=None,
                        help="exit when this process is gone (the service)")
    parser.add_argument("--idle-s", type=float, default=3600.0,
                        help="exit after this long without a request")
    parser.add_argument("--preload", nargs="*", default=None,
                        help="modules to import up front (default: what a feedback turn uses)")
    args = parser.parse_args(argv)
    preload = tuple(args.preload) if args.preload is not None else PRELOAD
    return Launcher(Path(args.dir), args.watch_pid, args.idle_s, preload).run()


if __name__ == "__main__":
    sys.exit(main())
