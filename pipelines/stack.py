"""The ZenML stack labelloop runs on (`stack.name`); the pipelines' code is the same on all.

- `labelloop` (default): the local orchestrator and artifact store plus an MLflow experiment
  tracker pointing at the project's tracking URI; every step runs in this process.
- `labelloop-containers`: every step in its own container (ZenML's local Docker orchestrator
  against a Docker-compatible API: Docker, or podman's `podman system service`), the step
  image built by ZenML's local image builder on top of the labelloop image (`stack.step_image`,
  default `image.name:image.variant`, see labelloop/image.py), step outputs passed through the
  artifact store, MLflow reached as a server. The one-machine rehearsal of a Kubernetes stack.
- any other name: a stack you registered (Kubernetes, Kubeflow: docs/deploy.md), checked for
  the experiment tracker the steps name (`labelloop_mlflow`).

`ensure_stack` is idempotent and is called by every CLI entry point; run
`python -m pipelines.stack` once before using `zenml pipeline run` directly.
"""

from __future__ import annotations

import sys

import labelloop  # noqa: F401  (telemetry off before zenml is imported)
from labelloop import registry
from labelloop.settings import ConfigError, Settings, load_settings

TRACKER_NAME = "labelloop_mlflow"
STACK_NAME = "labelloop"
CONTAINER_STACK = "labelloop-containers"
DOCKER_ORCHESTRATOR = "labelloop_docker"
IMAGE_BUILDER = "labelloop_image_builder"
# Files the step image must not carry (ZenML copies the source root into it).
DOCKERIGNORE = "configs/image/steps.dockerignore"
STEP_DOCKERFILE = "configs/image/steps.Dockerfile"


def ensure_stack(settings: Settings) -> str:
    """Register (or repoint) the MLflow tracker and the `labelloop` stack, and activate it."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    if settings.stack.name == CONTAINER_STACK:  # before any call to the registry
        check_container_prerequisites(settings)
    registry.ensure_experiment(settings)  # artifacts go under the data dir, not ./mlruns
    client = Client()
    uri = settings.tracking_uri
    wanted = tracker_configuration(uri)
    try:
        tracker = client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, TRACKER_NAME)
        if any(tracker.configuration.get(k) != v for k, v in wanted.items()):
            client.update_stack_component(
                TRACKER_NAME, StackComponentType.EXPERIMENT_TRACKER, configuration=wanted,
            )
    except KeyError:
        client.create_stack_component(
            name=TRACKER_NAME, flavor="mlflow",
            component_type=StackComponentType.EXPERIMENT_TRACKER, configuration=wanted,
        )
    if settings.stack.name == CONTAINER_STACK:
        _ensure_container_stack(client, settings)
    elif settings.stack.name != STACK_NAME:
        _check_own_stack(client, settings.stack.name)
    try:
        client.get_stack(STACK_NAME)
    except KeyError:
        default = client.get_stack("default")
        client.create_stack(
            name=STACK_NAME,
            components={
                StackComponentType.ORCHESTRATOR: default.components[StackComponentType.ORCHESTRATOR][0].id,
                StackComponentType.ARTIFACT_STORE: default.components[StackComponentType.ARTIFACT_STORE][0].id,
                StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
            },
        )
    if client.active_stack_model.name != settings.stack.name:
        client.activate_stack(settings.stack.name)
    return settings.stack.name


def tracker_configuration(uri: str) -> dict:
    """ZenML's MLflow tracker insists on credentials for an http(s) server; a server without
    auth ignores them, so MLflow's own variables are used when set and placeholders otherwise."""
    import os

    config = {"tracking_uri": uri}
    if uri.startswith(("http://", "https://")):
        config["tracking_username"] = os.environ.get("MLFLOW_TRACKING_USERNAME", "labelloop")
        config["tracking_password"] = os.environ.get("MLFLOW_TRACKING_PASSWORD", "no-auth")
    return config


def _component(client, kind, name: str, flavor: str, configuration: dict) -> None:
    try:
        client.get_stack_component(kind, name)
    except KeyError:
        client.create_stack_component(name=name, flavor=flavor, component_type=kind,
                                      configuration=configuration)


def _ensure_container_stack(client, settings: Settings) -> None:
    """Steps in containers: local Docker orchestrator, local image builder, the default
    (local, mounted into every step container) artifact store, MLflow as a server."""
    from zenml.enums import StackComponentType

    _split_tag_for_podman()
    _component(client, StackComponentType.ORCHESTRATOR, DOCKER_ORCHESTRATOR, "local_docker", {})
    _component(client, StackComponentType.IMAGE_BUILDER, IMAGE_BUILDER, "local", {})
    try:
        client.get_stack(CONTAINER_STACK)
    except KeyError:
        default = client.get_stack("default")
        client.create_stack(name=CONTAINER_STACK, components={
            StackComponentType.ORCHESTRATOR: DOCKER_ORCHESTRATOR,
            StackComponentType.IMAGE_BUILDER: IMAGE_BUILDER,
            StackComponentType.ARTIFACT_STORE:
                default.components[StackComponentType.ARTIFACT_STORE][0].id,
            StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
        })


def check_container_prerequisites(settings: Settings) -> None:
    if not settings.tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"stack.name {CONTAINER_STACK}: steps in containers reach MLflow as a server, but "
            f"registry.tracking_uri is {settings.tracking_uri}: start `mlflow server` and set "
            "registry.tracking_uri to its http:// URL")
    check_docker_api()
    check_tracking_server(settings.tracking_uri)


def check_tracking_server(uri: str) -> None:
    """ConfigError when the MLflow server does not answer: every step would fail on it, one
    container start (tens of seconds) at a time."""
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"stack.name {CONTAINER_STACK}: cannot reach the MLflow server at {uri} "
            f"({type(exc).__name__}: {str(exc)[:120]}): start `mlflow server` or fix "
            "registry.tracking_uri (the steps reach it from their containers, on the host "
            "network)") from None


def check_docker_api() -> None:
    """ConfigError naming the fix when no Docker-compatible API answers (DOCKER_HOST)."""
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the same fix
        raise ConfigError(
            f"stack.name {CONTAINER_STACK} needs a Docker-compatible API ({type(exc).__name__}: "
            f"{str(exc)[:120]}): start Docker, or `podman system service --time=0 "
            "unix:///run/labelloop-podman.sock &` and set "
            "DOCKER_HOST=unix:///run/labelloop-podman.sock (`make containers` installs podman)"
        ) from None


def _split_tag_for_podman() -> None:
    """ZenML tags images through docker-py as `image.tag("name:tag")`, which sends the whole
    reference as the repository; Docker splits it, podman 4.3's compatible API answers 500
    "invalid reference format". Send repository and tag apart (the same request for Docker)."""
    from zenml.container_engines.docker_engine import DockerContainerEngine

    if getattr(DockerContainerEngine.tag_image, "labelloop_split", False):
        return

    def tag_image(self, source: str, target: str) -> None:
        repository, _, tag = target.rpartition(":")
        if not repository or "/" in tag:  # no tag given
            repository, tag = target, "latest"
        self.client.images.get(source).tag(repository, tag=tag)

    tag_image.labelloop_split = True
    DockerContainerEngine.tag_image = tag_image


def _check_own_stack(client, name: str) -> None:
    """A stack registered by the user must exist and carry the tracker the steps name."""
    try:
        stack = client.get_stack(name)
    except KeyError:
        raise ConfigError(f"stack.name: no ZenML stack named {name!r} (`zenml stack list`; "
                          "docs/deploy.md shows how to register one)") from None
    from zenml.enums import StackComponentType

    trackers = stack.components.get(StackComponentType.EXPERIMENT_TRACKER) or []
    if not any(t.name == TRACKER_NAME for t in trackers):
        raise ConfigError(
            f"ZenML stack {name!r} has no experiment tracker named {TRACKER_NAME!r}, which the "
            f"steps log to: `zenml experiment-tracker register {TRACKER_NAME} --flavor=mlflow "
            f"--tracking_uri=<MLflow server URL>` then `zenml stack update {name} -e "
            f"{TRACKER_NAME}`")


def run_options(settings: Settings, options: dict) -> dict:
    """`options` plus what a containerized stack needs: the step image (the labelloop image,
    which holds every dependency), the LABELLOOP__ settings forwarded to every step, and, for
    the local Docker orchestrator, the host network (MLflow and Label Studio on 127.0.0.1) and
    the data dir mounted at the same path (the labels store and the loop's status live there)."""
    if settings.stack.name == STACK_NAME:
        return options
    import os

    from zenml.config import DockerSettings
    from zenml.config.docker_settings import DockerBuildConfig

    from zenml.utils import source_utils

    # The code steps download is the repository (source root), whichever module started the run.
    source_utils.set_custom_source_root(str(_repo_root()))
    merged = dict(options)
    step_settings = dict(merged.get("settings") or {})
    parent = settings.stack.step_image or f"{settings.image.name}:{settings.image.variant}"
    step_settings["docker"] = DockerSettings(
        dockerfile=str(_repo_root() / STEP_DOCKERFILE),
        # rm: the Docker SDK keeps a build's intermediate containers unless told (docker-py's
        # old default); on podman's API each is a mounted buildah working container, left
        # behind by every run's two builds
        parent_image_build_config=DockerBuildConfig(
            build_options={"buildargs": {"LABELLOOP_IMAGE": parent}, "rm": True},
            dockerignore=str(_repo_root() / DOCKERIGNORE)),
        build_config=DockerBuildConfig(build_options={"rm": True}),
        # The containers stack's components need nothing the labelloop image lacks; a cluster
        # stack's do (kubernetes for the orchestrator pod, s3fs/boto3 for an S3 store...):
        # ZenML installs its integrations' requirements into the step image there.
        install_stack_requirements=settings.stack.name != CONTAINER_STACK)
    if settings.stack.name == CONTAINER_STACK:
        from zenml.orchestrators.local_docker.local_docker_orchestrator import (
            LocalDockerOrchestratorSettings,
        )

        data = str(settings.data_path)
        volumes = {data: {"bind": data, "mode": "rw"}}
        for path in local_dataset_files(settings):  # read where the host reads them
            volumes.setdefault(str(path), {"bind": str(path), "mode": "ro"})
        # remove: ZenML runs each step container without it, leaving one exited per step.
        step_settings["orchestrator.local_docker"] = LocalDockerOrchestratorSettings(run_args={
            "network_mode": "host", "volumes": volumes, "remove": True})
    merged["settings"] = step_settings
    env = {k: v for k, v in os.environ.items() if k.startswith("LABELLOOP__")}
    env["LABELLOOP__DATA_DIR"] = str(settings.data_path)
    env["LABELLOOP__REGISTRY__TRACKING_URI"] = settings.tracking_uri
    merged["environment"] = {**env, **(merged.get("environment") or {})}
    return merged


def local_dataset_files(settings: Settings) -> list:
    """The dataset's local files outside the data dir (a `package:` path is inside the image;
    URLs and SQL sources are reached over the network)."""
    from pathlib import Path

    paths = []
    sources = [settings.dataset.path, getattr(settings.dataset.train, "path", None),
               getattr(settings.dataset.test, "path", None)]
    for value in sources:
        for item in ([value] if isinstance(value, str) else list(value or [])):
            if not isinstance(item, str) or ":" in item.split("/", 1)[0]:
                continue  # package:..., http://..., s3://...
            path = Path(item).expanduser().resolve()
            if path.exists() and not path.is_relative_to(settings.data_path.resolve()):
                paths.append(path)
    return paths


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    config = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"active ZenML stack: {ensure_stack(load_settings(config))}")
