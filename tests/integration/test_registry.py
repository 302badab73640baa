"""Registry consistency against a real MLflow SQLite store: half-registered versions never serve."""

from __future__ import annotations

import mlflow
import pytest

from labelloop import registry
from labelloop.settings import load_settings
from tests.helpers import register_untrained_version

pytestmark = pytest.mark.integration


@pytest.fixture()
def settings(tmp_path):
    return load_settings(environ={}, overrides={"data_dir": str(tmp_path / "data")})


def test_incomplete_bundle_is_rolled_back(settings, tmp_path):
    experiment_id = registry.ensure_experiment(settings)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no labelloop.json: not a bundle
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(broken), registry.BUNDLE_ARTIFACT_PATH)
    with pytest.raises(Exception, match="not a labelloop model bundle"):
        registry.register_bundle(settings, run.info.run_id)
    assert registry.list_versions(settings) == []
    assert registry.get_champion(settings) is None


def test_pending_version_cannot_become_champion_and_is_cleaned_up(settings):
    v1 = register_untrained_version(settings, seed=1)
    # Simulate a run killed between creating the version and verifying its bundle.
    client = registry.client(settings)
    pending = client.create_model_version(settings.registry.model_name, source="file:///nowhere",
                                          tags={registry.STATUS_TAG: "pending"})
    with pytest.raises(registry.RegistryError, match="not ready"):
        registry.set_champion(settings, pending.version)
    assert str(registry.get_champion(settings).version) == v1
    assert [str(v) for v in registry.cleanup_pending(settings)] == [str(pending.version)]
    assert [str(mv.version) for mv in registry.list_versions(settings)] == [v1]
    assert str(registry.get_champion(settings).version) == v1


def test_fetch_bundle_is_cached_and_complete(settings):
    v1 = register_untrained_version(settings, seed=2, champion=False)
    first = registry.fetch_bundle(settings, v1)
    assert (first / "labelloop.json").is_file() and (first / "model.safetensors").is_file()
    assert registry.fetch_bundle(settings, v1) == first
    assert registry.get_champion(settings) is None
