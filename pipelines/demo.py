"""`labelloop demo`: the whole loop on one machine.

1. settings: `--config`, else `configs/demo.yaml` on a machine without a GPU (a quick first model)
   and the defaults on a GPU; secrets for the service (Label Studio's Basic auth password, the
   webhook secret, the admin token) are generated once. Everything is written to
   `<data_dir>/demo-settings.yaml` (mode 0600), which every process of the demo reads;
2. train the first model if there is no champion yet (the `training` pipeline);
3. start the BentoML service in the background (`bentoml serve`, log and pid under the data dir);
4. start the annotation tools that are on (`annotation.tools`, or `--tools label-studio,argilla`):
   Label Studio (`labelloop studio up`) and/or Argilla (`labelloop argilla up`), in the
   background from the start, so their start-up overlaps the training;
5. Label Studio: set up the project (label config from the model's labels), the webhook and the
   ML backend, and import a pool of unlabelled texts with the champion's predictions, least
   certain first; Argilla: the dataset (a label question over the model's labels), the webhook,
   and records with the champion's suggestions;
6. print the URL, the login and the next command, as the user can run it (`make feedback`
   from the repository, else the venv's `labelloop` by its path unless it is on the PATH).

Running it again reuses what is there (champion, running service and Label Studio, project,
tasks). `labelloop demo --stop` stops the service and Label Studio (data stays).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import labelloop  # noqa: F401  (telemetry off first)
import yaml

from labelloop.processes import alive
from labelloop.settings import CONFIG_ENV, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
# `--task generation`: the generation demo (SmolLM2; edit and compare projects in Label Studio).
TASK_CONFIGS = {"classification": (DEMO_CONFIG, None),
                "generation": (REPO_ROOT / "configs" / "demo-generation.yaml",
                               REPO_ROOT / "configs" / "generation.yaml")}
SETTINGS_FILE = "demo-settings.yaml"
SERVICE = "services.service:Labelloop"


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def base_config(config: Optional[str], task: str = "classification") -> Optional[str]:
    """`--config`, else LABELLOOP_CONFIG, else the task's demo profile on a CPU (its full
    profile, or the defaults, on a GPU)."""
    if config:
        return config
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    if task not in TASK_CONFIGS:
        from labelloop.settings import ConfigError

        raise ConfigError(f"unknown demo task {task!r}; choose one of {sorted(TASK_CONFIGS)}")
    cpu, gpu = TASK_CONFIGS[task]
    if not _has_cuda() and cpu.is_file():
        return str(cpu)
    return str(gpu) if gpu else None


def write_demo_settings(config: Optional[str],
                        tools: Optional[list[str]] = None) -> tuple[Path, Settings]:
    """The demo's settings file: the chosen config + secrets generated once (0600); `tools`
    (from `--tools`) replaces `annotation.tools`."""
    settings = load_settings(config, overrides={"annotation": {"tools": tools}} if tools else None)
    path = settings.data_path / SETTINGS_FILE
    previous: dict[str, Any] = {}
    if path.is_file():
        previous = (yaml.safe_load(path.read_text()) or {}).get("serving", {})
    data = settings.model_dump(mode="json")
    data["data_dir"] = str(settings.data_path)
    if data["pool"]["source"] is None:
        # The demo's corpus is all labelled: its annotators label texts of the training split
        # (a simulation; a real project sets pool.source to its unlabelled texts).
        data["pool"]["from_training_split"] = True
    serving = data["serving"]
    for key in ("ls_basic_auth_password", "webhook_secret", "admin_token"):
        serving[key] = serving.get(key) or previous.get(key) or secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Written by `labelloop demo`: the demo's settings, with generated secrets.\n"
                "# Keep it private (mode 0600); delete it to generate new secrets.\n")
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)
    return path, load_settings(str(path))


# -- the service ---------------------------------------------------------------------------------
def service_url(settings: Settings) -> str:
    return f"http://{settings.serving.host}:{settings.serving.port}"


def _service_paths(settings: Settings) -> tuple[Path, Path]:
    d = settings.data_path / "service"
    d.mkdir(parents=True, exist_ok=True)
    return d / "service.pid", d / "service.log"


def service_pid(settings: Settings) -> Optional[int]:
    pid_file, _ = _service_paths(settings)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def service_ready(settings: Settings, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(service_url(settings) + "/readyz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_service(settings_file: Path, settings: Settings, timeout: float = 300.0) -> int:
    """`bentoml serve` in the background, reading the demo settings; waits until ready."""
    pid = service_pid(settings)
    if pid is not None and service_ready(settings):
        say(f"service already running at {service_url(settings)} (pid {pid})")
        return pid
    if pid is None and service_ready(settings):
        raise RuntimeError(f"another service already answers at {service_url(settings)}; stop it "
                           "or set serving.port")
    pid_file, log_file = _service_paths(settings)
    if pid is None:
        env = dict(os.environ)
        env = {k: v for k, v in env.items() if not k.startswith("LABELLOOP__")}
        env[CONFIG_ENV] = str(settings_file)
        cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE,
               "--host", settings.serving.host, "--port", str(settings.serving.port)]
        say(f"starting the service at {service_url(settings)} (log {log_file})")
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pid = proc.pid
        pid_file.write_text(f"{pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service_ready(settings):
            say(f"service ready (pid {pid})")
            return pid
        if not alive(pid):
            tail = log_file.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("the service exited during start-up:\n  " + "\n  ".join(tail))
        time.sleep(1.0)
    raise RuntimeError(f"the service was not ready after {timeout:.0f}s; see {log_file}")


def stop_service(settings: Settings, timeout: float = 30.0) -> bool:
    pid_file, _ = _service_paths(settings)
    pid = service_pid(settings)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        say("service is not running")
        return False
    say(f"stopping the service (pid {pid})")
    try:
        os.killpg(pid, signal.SIGTERM)  # its own process group: bentoml's workers too
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.3)
    if alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return True


# -- Label Studio ----------------------------------------------------------------------------------
def _say_pool(report: dict[str, Any]) -> None:
    from annotation.pool import summary

    line = summary(report)
    if line:
        say(line)


def setup_project(settings: Settings) -> dict[str, Any]:
    """Project + webhook + ML backend; tasks with predictions imported once (idempotent)."""
    from annotation.labelstudio import connect, existing_texts, import_pool, setup

    client = connect(settings)
    out = setup(settings, client=client, ml_backend=True, progress=say)
    project = out["project"]
    have = len(existing_texts(client, project))
    if have == 0:
        say(f"importing up to {settings.studio.pool_size} tasks with the champion's "
            + ("responses (edit and compare projects)" if settings.task.type == "generation"
               else f"predictions ({settings.studio.ordering} first)"))
        out["import"] = import_pool(settings, project_id=project, client=client)
        _say_pool(out["import"])
    else:
        say(f"project already holds {have} tasks: nothing imported")
        out["import"] = {"imported": 0, "existing": have}
    return out


def setup_argilla(settings: Settings) -> dict[str, Any]:
    """Dataset + webhook; records with the champion's suggestions logged once (idempotent)."""
    from annotation import argilla as A

    client = A.connect(settings)
    out = A.setup(settings, client=client, progress=say)
    have = len(A.list_records(client, out["dataset"], include=""))
    if have == 0:
        # Generation records are ranked by how sure the model is of its response
        # (annotation.argilla._log_prompts); classification's by studio.ordering.
        order = "least certain" if settings.task.type == "generation" else settings.studio.ordering
        say(f"logging up to {settings.argilla.pool_size} records with the champion's suggestions "
            f"({order} first)")
        out["log"] = A.log_pool(settings, client=client)
        _say_pool(out["log"])
    else:
        say(f"dataset already holds {have} records: nothing logged")
        out["log"] = {"logged": 0, "existing": have}
    return out


class _Background:
    """`fn()` in a daemon thread; `result()` re-raises what it raised. Label Studio starts
    (30-90 s on this 2-core box, most of it a Django start) while the first model trains."""

    def __init__(self, fn):
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._out["error"] = exc

    def check_early(self, wait: float = 1.0) -> None:
        """Raise now what failed at once (a port taken by someone else's Label Studio), rather
        than after minutes of training."""
        self._thread.join(wait)
        if "error" in self._out:
            raise self._out["error"]

    def result(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def _tool_progress(tool: str):
    """A tool's start-up lines, tagged with its name ([studio], [argilla]), without the
    periodic "waiting for /health" lines, which would cut through the training output."""
    def say(msg: str) -> None:
        if not msg.startswith("waiting for"):
            print(f"[{tool}] {msg}", file=sys.stderr, flush=True)
    return say


def command_hint(args: str, make_target: Optional[str] = None) -> str:
    """How the user who ran the demo runs `labelloop <args>`: `make <target>` from the repo,
    else the venv's `labelloop` by its path unless that very script is on the PATH."""
    script = Path(sys.executable).parent / "labelloop"
    found = shutil.which("labelloop")
    if found and Path(found).resolve() == script.resolve():
        direct = f"labelloop {args}"
    else:
        direct = f"{_shown_path(script)} {args}"
    if make_target and Path.cwd().resolve() == REPO_ROOT:
        return f"make {make_target}   (= {direct})"
    return direct


def _shown_path(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute (no ../../tmp/...)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def up(config: Optional[str], tools: Optional[list[str]] = None,
       task: str = "classification") -> int:
    from annotation import argilla_server, studio
    from labelloop import registry

    started = time.monotonic()
    chosen = base_config(config, task)
    say(f"settings: {chosen or 'built-in defaults'}")
    settings_file, settings = write_demo_settings(chosen, tools)
    say(f"demo settings (with generated secrets, mode 0600): {settings_file}")
    tools = settings.annotation.tools
    say(f"annotation tools: {', '.join(tools)}")
    # The tools start in the background from the start: their start-up overlaps the training.
    servers = {}
    if "label-studio" in tools:
        servers["label-studio"] = _Background(lambda: studio.start(
            settings, timeout=600, progress=_tool_progress("studio")))
    if "argilla" in tools:
        servers["argilla"] = _Background(lambda: argilla_server.start(
            settings, progress=_tool_progress("argilla")))
    for server in servers.values():
        server.check_early()
    champion = registry.get_champion(settings)
    if champion is None:
        say("no champion yet: training the first model (the annotation tools start meanwhile)")
        from pipelines.run import run_training

        run_training(str(settings_file))
        say(f"first model trained after {_minutes(time.monotonic() - started)}")
    else:
        say(f"champion: {settings.registry.model_name} version {champion.version}")
    start_service(settings_file, settings)
    shown = []
    if "label-studio" in servers:
        server = servers["label-studio"].result()
        out = setup_project(settings)
        for kind, url in (out.get("urls") or {"": out["url"]}).items():  # generation: edit, compare
            # the project's kind after the URL: "Label Studio compare" overflowed the name column
            shown.append(("Label Studio", f"{url}  ({kind} project)" if kind else url,
                          server.username, server.password))
    if "argilla" in servers:
        server = servers["argilla"].result()
        out = setup_argilla(settings)
        shown.append(("Argilla", out["url"], server.username, server.password))
    rel = _shown_path(settings_file)
    default_file = (REPO_ROOT / ".labelloop" / SETTINGS_FILE).resolve() == settings_file.resolve()
    print()
    print(f"=== labelloop demo is running (ready after {_minutes(time.monotonic() - started)}) ===")
    for name, url, username, password in shown:
        print(f"{name:<15}{url}")
        print(f"  login        {username} / {password}")
    generation = settings.task.type == "generation"
    print(f"service        {service_url(settings)}  ("
          + ("POST /generate, /v1/chat/completions" if generation else "POST /classify")
          + ", GET /metadata)")
    if "label-studio" in tools and generation:
        print("next           rewrite a few responses (edit project) and pick the better answer")
        print("               of a few pairs (compare project), Submit, then Settings > Model >")
        print("               the card's '...' menu > Start Training (and confirm) or run:")
    elif "label-studio" in tools:
        print("next           open a few tasks, correct the model's choice and Submit, then")
        print("               Settings > Model > the card's '...' menu > Start Training (and")
        print("               confirm) or run:")
    elif generation:
        print("next           answer a few records in Argilla (keep or rewrite the suggested")
        print("               response, say which of A and B is better, Submit), then run:")
    else:
        print("next           answer a few records in Argilla (keep or change the suggestion,")
        print("               Submit), then run:")
    print("                 " + command_hint(f"feedback --train --config {rel}",
                                             "feedback" if default_file else None))
    print("               the new champion answers at "
          f"{service_url(settings)}/metadata once promoted")
    print("stop           " + command_hint("demo --stop" + ("" if default_file else
                                                           f" --config {rel}"),
                                           "stop" if default_file else None))
    return 0


def down(config: Optional[str]) -> int:
    from annotation import argilla_server, studio

    settings = load_settings(config)
    demo_file = settings.data_path / SETTINGS_FILE
    if demo_file.is_file():
        settings = load_settings(str(demo_file))
    stop_service(settings)
    studio.stop(settings, progress=say)
    argilla_server.stop(settings, progress=say)
    say("stopped (data stays under " + str(settings.data_path) + ")")
    return 0


def main(args) -> int:
    config = getattr(args, "config", None)
    task = getattr(args, "task", None) or "classification"
    if getattr(args, "stop", False):
        return down(config or (base_config(None, task) if task != "classification" else None))
    tools = getattr(args, "tools", None)
    return up(config, [t.strip() for t in tools.split(",") if t.strip()] if tools else None, task)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--stop", action="store_true", help="stop the service and the annotation tools")
    p.add_argument("--tools", help="annotation tools, comma-separated: label-studio, argilla")
    p.add_argument("--task", choices=sorted(TASK_CONFIGS), default="classification",
                   help="which task family's demo (generation: configs/demo-generation.yaml)")
    raise SystemExit(main(p.parse_args()))
