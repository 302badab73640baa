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


def test_champions_are_tagged_and_the_best_one_is_found(settings):
    """`best_promoted` (the promotion rule's bound over turns) looks only at versions that have
    been champion, skips the challenger and versions without a score on this test split."""
    v1 = register_untrained_version(settings, seed=3)
    v2 = register_untrained_version(settings, seed=4, champion=False)
    v3 = register_untrained_version(settings, seed=5)
    tags = {str(mv.version): mv.tags for mv in registry.list_versions(settings)}
    assert registry.PROMOTED_TAG in tags[v1] and registry.PROMOTED_TAG in tags[v3]
    assert registry.PROMOTED_TAG not in tags[v2]
    first_at = tags[v1][registry.PROMOTED_TAG]
    registry.set_champion(settings, v1)          # back to v1: the first promotion time stays
    assert registry.get_version(settings, v1).tags[registry.PROMOTED_TAG] == first_at
    scores = {v1: 0.70, v2: 0.90, v3: 0.80}      # v2 was never champion
    assert registry.best_promoted(settings, scores.get, exclude="99") == (v3, 0.80)
    assert registry.best_promoted(settings, scores.get, exclude=v3) == (v1, 0.70)
    assert registry.best_promoted(settings, {v1: 0.7}.get, exclude="99") == (v1, 0.70)
    assert registry.best_promoted(settings, {}.get, exclude="99") is None
    # the classification side: scores from the predictions stored for this test split only
    import numpy as np
    import pandas as pd

    from labelloop import challenger, data

    test = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["negative"] * 4})
    refs = np.zeros(4, dtype=np.int64)
    challenger.store_test_predictions(settings, v1, data.digest(test), np.array([0, 0, 1, 1]))
    challenger.store_test_predictions(settings, v2, data.digest(test), np.array([0, 0, 0, 0]))
    challenger.store_test_predictions(settings, v3, "another-split", np.array([0, 0, 0, 0]))
    assert challenger.best_promoted(settings, test, refs, 3, "99") == (
        v1, pytest.approx(1 / 3 * (2 / 3)))  # macro-F1 of [0,0,1,1]: class 0 F1 2/3, others 0
