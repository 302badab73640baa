"""Step: log the bundle to the MLflow run and register it as a new model version.

Registration is two-phase (see labelloop.registry): the version is `ready` only once its bundle
has been read back, so a crash here never leaves a usable-looking half version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import mlflow
import numpy as np
import pandas as pd
from zenml import log_metadata, step

from labelloop import data, provenance, registry
from labelloop.challenger import store_test_predictions
from labelloop.modeling import read_bundle_meta
from labelloop.tasks import task_from_settings
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for


@step(experiment_tracker=TRACKER_NAME)
def register_model(
    model_bundle: Path,
    metrics: dict,
    test: pd.DataFrame,
    test_predicted: list,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> Annotated[str, "model_version"]:
    settings = settings_for(config, overrides)
    meta = read_bundle_meta(model_bundle)
    task = task_from_settings(settings)
    generation = task.type == "generation"
    if generation:
        from labelloop.generation import data as gen_data
        from labelloop.generation import steps as gen_steps
    test_digest = gen_data.digest(test) if generation else data.digest(test)
    run = mlflow.active_run()
    mlflow.log_artifacts(str(model_bundle), registry.BUNDLE_ARTIFACT_PATH)
    mv = registry.register_bundle(settings, run.info.run_id, tags={
        "task": meta["task"]["name"],
        "base_model": meta["base_model"],
        "dataset_digest": meta["dataset_digest"],
        "method": meta["method"],
        # The score and the exact test rows it was measured on: promotion reuses the score
        # only while the frozen test split is unchanged (same digest).
        **provenance.version_tags(meta),
        "test_digest": test_digest,
        **{f"test_{name}": repr(float(metrics[name])) for name in task.promotion_metrics},
        **(gen_steps.registry_tags(meta, metrics, settings) if generation else {}),
    })
    log_metadata({
        "mlflow_model_name": mv.name, "mlflow_model_version": mv.version,
        "mlflow_run_id": run.info.run_id, **{f"test_{k}": v for k, v in metrics.items()},
    }, infer_model=True)
    # The paired promotion test reads these instead of scoring the version again.
    if generation:
        from labelloop.generation.promotion import store_outputs

        store_outputs(settings, str(mv.version), test, list(test_predicted))
    else:
        store_test_predictions(settings, str(mv.version), test_digest,
                               np.asarray(test_predicted, dtype=np.int64))
    # (The run keeps ZenML's run name, `training-v<N>-...` from `labelloop train`: ZenML finds
    # the MLflow run of later steps by that name.)
    print(f"registered {mv.name} version {mv.version} (run {run.info.run_id})")
    return str(mv.version)
