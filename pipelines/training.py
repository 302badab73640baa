"""ZenML pipeline `training`: load -> split -> fine-tune -> evaluate (and the TF-IDF baseline)
-> register -> promote.

Run it with `labelloop train --config configs/default.yaml`, or with ZenML directly:
`zenml pipeline run pipelines.training.training --config configs/pipelines/training.yaml`
(after `python -m pipelines.stack` has set up the stack once).
"""

from __future__ import annotations

from typing import Any, Optional

from zenml import Model, pipeline
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
    MLFlowExperimentTrackerSettings,
)

from labelloop.modeling import resolve_base_model
from labelloop.settings import RegistrySettings, Settings, load_settings
from pipelines.steps.evaluate import evaluate_model
from pipelines.steps.fine_tune import fine_tune
from pipelines.steps.load_data import load_data
from pipelines.steps.promote import promote_model
from pipelines.steps.register import register_model


def pipeline_options(registry_settings: RegistrySettings) -> dict[str, Any]:
    """Model name and MLflow experiment come from the project settings (one source of truth)."""
    return {
        # Never cache: steps read settings from the environment and write to the registry.
        "enable_cache": False,
        "model": Model(name=registry_settings.model_name),
        "settings": {"experiment_tracker": MLFlowExperimentTrackerSettings(
            experiment_name=registry_settings.experiment)},
    }


@pipeline(**pipeline_options(Settings().registry))
def training(config: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
             include_human_labels: bool = False,
             human_labels_max_seq: Optional[int] = None) -> None:
    # Runs when the pipeline is compiled: a bad config or base model fails before any step.
    settings = load_settings(config, overrides=overrides)
    if settings.task.type == "generation":
        from labelloop.generation.base import cache_root, resolve_causal_base

        resolve_causal_base(settings.model.base, cache_root(settings))
    else:
        resolve_base_model(settings.model.base)
    train, test, validation, data_provenance = load_data(config, overrides, include_human_labels,
                                                         human_labels_max_seq)
    bundle = fine_tune(train, test, validation, data_provenance, config, overrides)
    metrics, predicted, baseline, _ = evaluate_model(bundle, train, test, validation, config,
                                                  overrides)
    version = register_model(bundle, metrics, test, predicted, config, overrides)
    promote_model(version, metrics, test, predicted, config, overrides, baseline)
