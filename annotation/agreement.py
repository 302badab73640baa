"""Model/annotator agreement: how often annotators keep the model's prediction, per model version.

The live quality signal of the loop. Computed from the labels store (only annotations whose shown
prediction is known), logged to MLflow as one run in the `registry.experiment` experiment with
metrics `agreement/v<N>` and `annotations/v<N>` per version, and tagged on the registered model
versions (`labelloop.agreement`, `labelloop.agreement_n`) so `labelloop status` can show it.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from labelloop.labels_store import ACTIVE, open_store
from labelloop.settings import Settings


def agreement_by_version(settings: Settings, source: Optional[str] = None,
                         project: Any = None) -> pd.DataFrame:
    """DataFrame[model_version, annotations, kept, agreement] (active labels with a shown prediction)."""
    with open_store(settings) as store:
        df = store.rows(source=source, project=project, status=ACTIVE)
    df = df[df["shown_label"].notna() & df["model_version"].notna()] if not df.empty else df
    if df.empty:
        return pd.DataFrame(columns=["model_version", "annotations", "kept", "agreement"])
    df = df.assign(kept=(df["label"] == df["shown_label"]).astype(int))
    out = df.groupby("model_version").agg(annotations=("kept", "size"), kept=("kept", "sum"))
    out["agreement"] = out["kept"] / out["annotations"]
    out = out.reset_index()
    return out.sort_values("model_version", key=lambda s: pd.to_numeric(s, errors="coerce"))\
        .reset_index(drop=True)


def log_agreement(settings: Settings, source: Optional[str] = None, project: Any = None,
                  run_name: str = "annotator-agreement") -> dict[str, Any]:
    """Compute and log to MLflow; returns {"run_id", "versions": {version: {...}}}."""
    import mlflow

    from labelloop import registry

    table = agreement_by_version(settings, source, project)
    versions = {
        str(r.model_version): {"annotations": int(r.annotations), "kept": int(r.kept),
                               "agreement": float(r.agreement)}
        for r in table.itertuples()
    }
    experiment_id = registry.ensure_experiment(settings)
    # Inside a feedback turn this is one of the turn's nested runs, not a run of its own.
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=None if nested else experiment_id, run_name=run_name,
                          nested=nested) as run:
        mlflow.set_tags({"labelloop.kind": "agreement", "labelloop.source": source or "all",
                         "labelloop.project": "all" if project is None else str(project)})
        metrics = {}
        for version, v in versions.items():
            metrics[f"agreement/v{version}"] = v["agreement"]
            metrics[f"annotations/v{version}"] = v["annotations"]
        if versions:
            total = sum(v["annotations"] for v in versions.values())
            metrics["agreement/all"] = sum(v["kept"] for v in versions.values()) / total
            metrics["annotations/all"] = total
            mlflow.log_metrics(metrics)
    c = registry.client(settings)
    for version, v in versions.items():
        try:
            c.set_model_version_tag(settings.registry.model_name, version,
                                    "labelloop.agreement", f"{v['agreement']:.4f}")
            c.set_model_version_tag(settings.registry.model_name, version,
                                    "labelloop.agreement_n", str(v["annotations"]))
        except Exception:  # noqa: BLE001 - a version from another registry: metrics suffice
            pass
    return {"run_id": run.info.run_id, "versions": versions}
