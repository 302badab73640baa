"""The model registry: MLflow registered models, versions and the `champion` alias.

A version is registered in two phases: created with tag `labelloop.status=pending`, then marked
`ready` once its bundle is verified. Only a `ready` version can become champion, and the alias is
the only thing that says which version serves, so an interrupted run leaves at worst a pending
version that nothing points at (`cleanup_pending` deletes those). A version that becomes champion
is tagged `labelloop.promoted_at`: the promotion rule bounds a challenger's loss against the best
of those (`best_promoted`), not only against the champion of the moment.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from datetime import datetime, timezone
from typing import Callable, Optional

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from labelloop.errors import RegistryError  # noqa: F401  (labelloop.registry.RegistryError)
from labelloop.modeling import read_bundle_meta
from labelloop.settings import Settings

STATUS_TAG = "labelloop.status"
PROMOTED_TAG = "labelloop.promoted_at"   # when the version first became champion (UTC, ISO)
BUNDLE_ARTIFACT_PATH = "model"


def client(settings: Settings) -> MlflowClient:
    settings.data_path.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri)


def ensure_experiment(settings: Settings) -> str:
    """The experiment id; with the embedded SQLite store, artifacts live under the data dir."""
    c = client(settings)
    exp = c.get_experiment_by_name(settings.registry.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if settings.tracking_uri.startswith("sqlite:"):
        settings.mlflow_artifacts_path.mkdir(parents=True, exist_ok=True)
        location = settings.mlflow_artifacts_path.as_uri()
    return c.create_experiment(settings.registry.experiment, artifact_location=location)


def _ensure_registered_model(c: MlflowClient, name: str) -> None:
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="labelloop model (see labelloop.json)")


def register_bundle(
    settings: Settings, run_id: str, tags: Optional[dict[str, str]] = None
) -> ModelVersion:
    """Register the bundle logged under `model/` in run `run_id`; returns a `ready` version."""
    c = client(settings)
    name = settings.registry.model_name
    _ensure_registered_model(c, name)
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT_PATH}"
    all_tags = {STATUS_TAG: "pending", **(tags or {})}
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=all_tags)
    try:
        # Verify the bundle is complete and readable before anyone may promote it.
        bundle = fetch_bundle(settings, mv.version)
        read_bundle_meta(bundle)
        c.set_model_version_tag(name, mv.version, STATUS_TAG, "ready")
    except Exception:
        c.delete_model_version(name, mv.version)
        raise
    return c.get_model_version(name, mv.version)


def get_version(settings: Settings, version: str | int) -> ModelVersion:
    return client(settings).get_model_version(settings.registry.model_name, str(version))


def get_champion(settings: Settings) -> Optional[ModelVersion]:
    c = client(settings)
    try:
        return c.get_model_version_by_alias(
            settings.registry.model_name, settings.registry.champion_alias
        )
    except (MlflowException, RestException):
        return None


def set_champion(settings: Settings, version: str | int) -> None:
    c = client(settings)
    mv = c.get_model_version(settings.registry.model_name, str(version))
    if mv.tags.get(STATUS_TAG) != "ready":
        raise RegistryError(f"version {version} is not ready (status {mv.tags.get(STATUS_TAG)!r})")
    c.set_registered_model_alias(
        settings.registry.model_name, settings.registry.champion_alias, str(version)
    )
    if PROMOTED_TAG not in mv.tags:
        c.set_model_version_tag(settings.registry.model_name, str(version), PROMOTED_TAG,
                                datetime.now(timezone.utc).isoformat(timespec="seconds"))


def best_promoted(settings: Settings, score_of: Callable[[str], Optional[float]],
                  exclude: str) -> Optional[tuple[str, float]]:
    """(version, score) of the best version that has been champion, other than `exclude`, by
    `score_of` (None: no score for it, e.g. it never ran on this test split); None if none."""
    best = None
    for mv in list_versions(settings):
        if PROMOTED_TAG not in mv.tags or str(mv.version) == str(exclude):
            continue
        s = score_of(str(mv.version))
        if s is not None and (best is None or s > best[1]):
            best = (str(mv.version), s)
    return best


def list_versions(settings: Settings) -> list[ModelVersion]:
    c = client(settings)
    try:
        found = c.search_model_versions(f"name='{settings.registry.model_name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda mv: int(mv.version))


def next_version(settings: Settings) -> int:
    """The number the next registered version will most likely get (for run names)."""
    return max((int(mv.version) for mv in list_versions(settings)), default=0) + 1


def cleanup_pending(settings: Settings) -> list[str]:
    """Delete versions an interrupted run left `pending` (never the champion)."""
    champion = get_champion(settings)
    removed = []
    c = client(settings)
    for mv in list_versions(settings):
        if mv.tags.get(STATUS_TAG) == "pending" and (champion is None or champion.version != mv.version):
            c.delete_model_version(mv.name, mv.version)
            removed.append(mv.version)
    return removed


def fetch_bundle(settings: Settings, version: str | int) -> Path:
    """A local copy of a version's bundle, cached under the data dir (written atomically)."""
    name = settings.registry.model_name
    target = settings.models_cache_path / name / str(version)
    if (target / "labelloop.json").is_file():
        return target
    mv = client(settings).get_model_version(name, str(version))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=settings.tracking_uri
        )
        local_path = Path(local)
        if target.exists():
            shutil.rmtree(target)
        local_path.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
