"""Container images of labelloop: `labelloop image build` (= `make image`).

One image runs both roles: the BentoML service (the default command) and the pipelines
(`python -m labelloop.cli feedback|train`), because the service's START_TRAINING webhook starts
the feedback run as a child process of the service (labelloop/trigger.py): ZenML, PEFT and the
rest of the project's dependencies must be where the service is. A separate worker image would
need a queue between the two; one image keeps "Start training" working in a container.

The build, step by step:
  1. a container engine: podman (preferred: no daemon) or docker (`image.engine`);
  2. a base image with Python 3.11: `image.base_image`, or, when that is unset, a Debian
     bookworm image built here with debootstrap (no image registry needed; FACTS.md recipe);
     it is kept in the engine's storage and reused;
  3. the bento (`bentoml build` with bentofile.yaml), its torch pinned to `image.torch_version`:
     the CPU wheel shipped inside the bento for `variant: cpu`, the CUDA build from PyPI for
     `variant: gpu`; every other package pinned by configs/pip-constraints.txt
     (configs/image/Dockerfile.j2 installs them);
  4. `bentoml containerize` to a temporary tag, renamed to `image.name:<variant>` only when
     the build succeeded, so a failed build leaves no half-tagged image.

Nothing changed, nothing built: the digest of the build's inputs (the files the bento takes,
the rendered bentofile with its torch line and base image, the base image's id, the Dockerfile
template) is kept beside the image's id under the cache dir; when both match, the image is
reused as it is (`--rebuild` forces a build).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from labelloop.settings import ImageSettings, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("LABELLOOP_CACHE_DIR", "~/.cache/labelloop")).expanduser()
LOCAL_BASE_IMAGE = "localhost/labelloop-base:bookworm"
# podman on this kind of machine (a root user inside a VM or container) needs runc, cgroupfs
# and ulimits it may set; without them: "crun: setrlimit RLIMIT_NOFILE: Operation not
# permitted", then "cgroups in hybrid mode not supported" (FACTS.md).
PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class ImageError(RuntimeError):
    """Building or running an image cannot go on; the message names what to install or set."""


@dataclass(frozen=True)
class Engine:
    name: str  # podman | docker
    path: str
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, capture: bool = True,
            timeout: Optional[float] = None, input_: Optional[bytes] = None,
            ) -> subprocess.CompletedProcess:
        out = subprocess.run([self.path, *args], env={**os.environ, **self.env},
                             capture_output=capture, timeout=timeout, input=input_)
        if check and out.returncode != 0:
            err = (out.stderr or b"").decode(errors="replace").strip().splitlines()[-5:]
            raise ImageError(f"`{self.name} {' '.join(args[:3])} ...` failed: " + " | ".join(err))
        return out

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def remove_image(self, ref: str) -> None:
        self.run("rmi", "-f", ref, check=False)


def podman_env(cache_dir: Path = CACHE_DIR) -> dict[str, str]:
    """podman's own config and storage under the cache dir: its images (the base image and the
    build's layers) survive between runs and stay out of the system's podman."""
    root = cache_dir / "containers"
    root.mkdir(parents=True, exist_ok=True)
    conf, storage = root / "containers.conf", root / "storage.conf"
    if not conf.exists() or conf.read_text() != PODMAN_CONF:
        conf.write_text(PODMAN_CONF)
    wanted = (f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\n'
              f'runroot = "/run/labelloop-containers-{os.getuid()}"\n')
    if not storage.exists() or storage.read_text() != wanted:
        storage.write_text(wanted)
    return {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def find_engine(cfg: ImageSettings) -> Engine:
    """The container engine to use, checked to answer; ImageError naming the fix otherwise."""
    names = ["podman", "docker"] if cfg.engine == "auto" else [cfg.engine]
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        engine = Engine(name, path, podman_env() if name == "podman" else {})
        probe = engine.run("info", check=False, timeout=60)
        if probe.returncode == 0:
            return engine
        if cfg.engine != "auto":
            err = (probe.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            raise ImageError(f"container engine {name} does not answer ({' '.join(err)}); "
                             f"{'start the Docker daemon' if name == 'docker' else 'check podman'}"
                             " or set image.engine to another engine")
    raise ImageError("no working container engine (looked for "
                     f"{' and '.join(names)}): run `make containers` (installs podman, runc and "
                     "debootstrap with apt-get) or install Docker, or set image.engine")


# ---- the base image ------------------------------------------------------------------------
def base_image(engine: Engine, cfg: ImageSettings, log=print) -> str:
    """`image.base_image` if set; else the local Debian image, built once with debootstrap."""
    if cfg.base_image:
        return cfg.base_image
    if engine.image_exists(LOCAL_BASE_IMAGE):
        return LOCAL_BASE_IMAGE
    build_local_base(engine, cfg, log=log)
    return LOCAL_BASE_IMAGE


def _host_ca_certificates() -> list[Path]:
    # Outbound HTTPS may go through an intercepting proxy whose CA the host trusts: the build
    # (pip/uv inside the image) must trust it too. Copied at build time, never committed.
    return sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))


def build_local_base(engine: Engine, cfg: ImageSettings, log=print) -> None:
    """Debian bookworm (minbase) + Python 3.11 + uv, imported as LOCAL_BASE_IMAGE."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageError("no base image: set image.base_image (e.g. python:3.11-slim where a "
                         "registry is reachable), or install debootstrap (`make containers`) "
                         "to build a local Debian one")
    if os.geteuid() != 0:
        raise ImageError("building the local base image needs root (debootstrap and chroot); "
                         "run as root or set image.base_image")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    log(f"building the base image {LOCAL_BASE_IMAGE} (debootstrap bookworm, about a minute)")
    with tempfile.TemporaryDirectory(prefix="labelloop-rootfs-", dir=CACHE_DIR) as tmp:
        root = Path(tmp) / "rootfs"
        _run([debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
              "bookworm", str(root), cfg.debian_mirror], "debootstrap")
        certs = _host_ca_certificates()
        for crt in certs:
            shutil.copy(crt, root / "usr/local/share/ca-certificates" / crt.name)
        # A clean environment: the host's PIP_* / proxy settings must not leak into the image.
        clean = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        if certs:
            _run(["chroot", str(root), "update-ca-certificates"], "update-ca-certificates",
                 env=clean)
        if uv:
            shutil.copy(uv, root / "usr/local/bin/uv")
        else:
            shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
            _run(["chroot", str(root), "sh", "-c", "apt-get update -qq && apt-get install -y -qq "
                  "python3-pip && pip install --break-system-packages uv"], "uv", env=clean)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            out = subprocess.run([engine.path, "import", "--change",
                                  "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "-",
                                  LOCAL_BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                                 env={**os.environ, **engine.env})
        finally:
            tar.stdout.close()
            tar.wait()
        if out.returncode != 0 or tar.returncode != 0:
            engine.remove_image(LOCAL_BASE_IMAGE)
            raise ImageError(f"importing the base image failed: {out.stderr.decode()[-400:]}")


def _run(cmd: list[str], what: str, env: Optional[dict[str, str]] = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise ImageError(f"{what} failed: " + " | ".join(tail))


# ---- the bento -----------------------------------------------------------------------------
# BentoML takes wheels only from inside the build context: a link to the cached one lives here
# (build/ is ignored by git and excluded from the bento's src/; hidden folders are refused).
CONTEXT_WHEELS = Path("build") / "image-wheels"


def torch_requirement(cfg: ImageSettings, wheel_dir: Path) -> str:
    """The torch line of the bento: the CPU wheel (shipped in the bento) or the CUDA build."""
    if cfg.variant == "gpu":
        return f"torch=={cfg.torch_version}"
    wheel = cpu_torch_wheel(cfg, wheel_dir)
    linked = PROJECT_ROOT / CONTEXT_WHEELS / wheel.name
    if not linked.exists():
        linked.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(wheel, linked)
        except OSError:  # another file system
            shutil.copy(wheel, linked)
    return str(CONTEXT_WHEELS / wheel.name)


def cpu_torch_wheel(cfg: ImageSettings, wheel_dir: Path) -> Path:
    """torch==<version>+cpu for Python 3.11 on x86_64 Linux, downloaded once into wheel_dir
    (pip's configured sources first: a local wheel directory or mirror; then PyTorch's CPU
    index). PyPI's Linux torch is the multi-GB CUDA build, hence the separate wheel."""
    wanted = f"torch-{cfg.torch_version}+cpu-cp311-cp311-"
    found = sorted(wheel_dir.glob(f"{wanted}*.whl"))
    if found:
        return found[-1]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
           "--extra-index-url", cfg.torch_cpu_index, "--retries", "1",
           "-d", str(wheel_dir), f"torch=={cfg.torch_version}+cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheel_dir.glob(f"{wanted}*.whl"))
    if out.returncode != 0 or not found:
        raise ImageError(f"cannot get the CPU build of torch {cfg.torch_version} for the image "
                         f"(pip download from {cfg.torch_cpu_index} and pip's own sources "
                         f"failed: {out.stderr.strip().splitlines()[-1:]}); put the wheel "
                         f"{wanted}manylinux_2_28_x86_64.whl into {wheel_dir}")
    return found[-1]


def render_bentofile(cfg: ImageSettings, torch_line: str, base: str, out: Path) -> Path:
    """bentofile.yaml with this build's torch line and base image (the checked-in file stays
    the one source of what goes into the bento)."""
    spec = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    python = spec.setdefault("python", {})
    if torch_line.endswith(".whl"):
        python["packages"] = [p for p in python.get("packages", [])
                              if not p.replace(" ", "").startswith("torch")]
        python["wheels"] = [torch_line]
    else:
        python["packages"] = [torch_line if p.replace(" ", "").startswith("torch") else p
                              for p in python.get("packages", [])]
    spec.setdefault("docker", {})["base_image"] = base
    spec.setdefault("labels", {}).update({"variant": cfg.variant, "torch": cfg.torch_version})
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def build_bento(bentofile: Path, bentoml_home: Path) -> str:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(bentofile),
                          "--output", "tag", str(PROJECT_ROOT)], cwd=str(PROJECT_ROOT), env=env,
                         capture_output=True, text=True)
    tag = next((line.split("__tag__:", 1)[1].strip() for line in out.stdout.splitlines()
                if line.startswith("__tag__:")), None)
    if out.returncode != 0 or tag is None:
        raise ImageError(f"bentoml build failed: {(out.stderr or out.stdout)[-600:]}")
    return tag


# ---- the image -----------------------------------------------------------------------------
@dataclass
class BuildResult:
    image: str
    bento: str
    engine: str
    base_image: str
    reused: bool = False  # inputs unchanged since the last build: nothing was built


def bento_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files `bentoml build` takes (bentofile.yaml's include minus exclude), sorted."""
    spec = yaml.safe_load((root / "bentofile.yaml").read_text())
    excluded = [e.strip("/") for e in spec.get("exclude", [])]

    def kept(rel: str) -> bool:
        for pattern in excluded:
            if pattern.startswith("**/"):
                if pattern[3:] in rel.split("/"):
                    return False
            elif rel == pattern or rel.startswith(pattern + "/"):
                return False
        return True

    found = {path for pattern in spec.get("include", []) for path in root.glob(pattern)
             if path.is_file() and kept(path.relative_to(root).as_posix())}
    return sorted(found)


def inputs_digest(bentofile_text: str, base_id: str, root: Path = PROJECT_ROOT) -> str:
    """One digest of everything that goes into the image (see the module doc)."""
    h = hashlib.sha256()
    for part in (bentofile_text, base_id):
        h.update(part.encode() + b"\0")
    for path in [*bento_files(root), root / "configs" / "image" / "Dockerfile.j2"]:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _state_file(ref: str) -> Path:
    return CACHE_DIR / "images" / (ref.replace("/", "_").replace(":", "_") + ".json")


def _image_id(engine: Engine, ref: str) -> Optional[str]:
    out = engine.run("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return out.stdout.decode().strip() if out.returncode == 0 else None


def image_ref(cfg: ImageSettings) -> str:
    return f"{cfg.name}:{cfg.variant}"


def build(settings: Settings, log=print, rebuild: bool = False) -> BuildResult:
    """Build the bento and containerize it as `image.name:<variant>`; see the module doc."""
    cfg = settings.image
    engine = find_engine(cfg)
    base = base_image(engine, cfg, log=log)
    torch_line = torch_requirement(cfg, CACHE_DIR / "wheels")
    bentoml_home = CACHE_DIR / "bentoml"
    final = image_ref(cfg)
    temporary = f"{cfg.name}:building-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="labelloop-bentofile-") as tmp:
        bentofile = render_bentofile(cfg, torch_line, base, Path(tmp) / "bentofile.yaml")
        digest = inputs_digest(bentofile.read_text(), _image_id(engine, base) or base)
        state = _state_file(final)
        current = _image_id(engine, final)
        if not rebuild and current and state.is_file():
            known = json.loads(state.read_text())
            if known.get("inputs") == digest and known.get("id") == current:
                log(f"{final} is up to date (inputs {digest[:12]} unchanged): nothing to build")
                return BuildResult(image=final, bento=known.get("bento", ""),
                                   engine=engine.name, base_image=base, reused=True)
        log(f"bentoml build (torch {cfg.torch_version}, {cfg.variant})")
        tag = build_bento(bentofile, bentoml_home)
    log(f"containerize {tag} with {engine.name} on {base} -> {final}")
    env = {**os.environ, **engine.env, "BENTOML_HOME": str(bentoml_home),
           "BENTOML_DO_NOT_TRACK": "true"}
    cmd = [sys.executable, "-m", "bentoml", "containerize", tag, "--backend", engine.name,
           "-t", temporary, "--opt", f"network={cfg.network}"]
    try:
        # cwd "/": BentoML accepts the Dockerfile template only below the working directory,
        # and it renders it from a temporary copy of the bento.
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/")
        if out.returncode != 0 or not engine.image_exists(temporary):
            raise ImageError("the image build failed (nothing was tagged): "
                             + _last_lines(out.stdout + out.stderr, 8))
        engine.run("tag", temporary, final)
        new_id = _image_id(engine, final)
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"inputs": digest, "id": new_id, "bento": tag}))
        if current and current != new_id:  # the image the name pointed at, now untagged
            engine.run("rmi", current, check=False)  # refused while a container uses it
    finally:
        engine.remove_image(temporary)  # untags only, once `final` points at the same image
        _remove_bento(tag, bentoml_home)
    return BuildResult(image=final, bento=tag, engine=engine.name, base_image=base)


def _remove_bento(tag: str, bentoml_home: Path) -> None:
    """The bento was only the build context (the image holds it): do not pile them up."""
    name, _, version = tag.partition(":")
    shutil.rmtree(bentoml_home / "bentos" / name / version, ignore_errors=True)


def _last_lines(text: str, n: int) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def describe(result: BuildResult) -> str:
    return json.dumps(result.__dict__)
