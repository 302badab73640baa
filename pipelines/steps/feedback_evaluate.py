"""Feedback step 2: score the champion on fresh human labels, ones it was not trained on.

A model version trained by the feedback loop carries the tag `labelloop.labels_seq`: the labels
store's sequence number when its training data was read. Fresh labels for it are the active
human labels written (created or changed) after that; a version without the tag (trained on the
base data alone) has seen no human label, so every human label is fresh for it. Texts of the
frozen test split count too: they are never trained on, so the champion has never seen them.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import pandas as pd
from zenml import step

from labelloop.settings import Settings
from pipelines.steps.common import settings_for

LABELS_SEQ_TAG = "labelloop.labels_seq"


def champion_info(settings: Settings) -> Optional[dict[str, Any]]:
    """version, labels_seq and the test scores recorded for the champion (None if no champion)."""
    from labelloop import registry

    champion = registry.get_champion(settings)
    if champion is None:
        return None
    info: dict[str, Any] = {"version": str(champion.version),
                            "labels_seq": int(champion.tags.get(LABELS_SEQ_TAG, 0) or 0),
                            "test": {}}
    try:
        run = registry.client(settings).get_run(champion.run_id)
        for key, value in run.data.metrics.items():
            if key.startswith("test_"):
                info["test"][key[len("test_"):]] = float(value)
    except Exception:  # noqa: BLE001 - a version without a run: no test score, no drop rule
        pass
    return info


def fresh_labels(settings: Settings, after_seq: int) -> pd.DataFrame:
    """Active human labels written after `after_seq`, one per text (the latest wins)."""
    from labelloop import labels_store

    with labels_store.open_store(settings) as store:
        df = store.rows(status=labels_store.ACTIVE)
    if df.empty:
        return pd.DataFrame(columns=["text", "label", "seq"])
    df = df.sort_values(["updated_ts", "seq"]).drop_duplicates("text", keep="last")
    df = df[df["seq"] > after_seq]
    return df[["text", "label", "seq"]].reset_index(drop=True)


def evaluate_on_fresh(settings: Settings) -> dict[str, Any]:
    from labelloop import evaluation, labels_store, registry
    from labelloop.modeling import Classifier
    from labelloop.tasks import LabelError, task_from_settings

    champ = champion_info(settings)
    with labels_store.open_store(settings) as store:
        new_since_run = store.new_labels_since_last_run()
        seq_now = store.current_seq()
    out: dict[str, Any] = {"champion": champ, "fresh_labels": 0, "fresh": None,
                           "new_labels_since_last_retrain": new_since_run, "store_seq": seq_now}
    if champ is None:
        print("fresh evaluation: no champion yet")
        return out
    fresh = fresh_labels(settings, champ["labels_seq"])
    task = task_from_settings(settings)
    known = fresh["label"].map(lambda lab: lab in task.labels) if not fresh.empty else []
    if len(fresh) and not all(known):
        fresh = fresh[known].reset_index(drop=True)  # the store validates; belt and braces
    out["fresh_labels"] = len(fresh)
    if fresh.empty:
        print(f"fresh evaluation: champion v{champ['version']}: no fresh human labels")
        return out
    classifier = Classifier(registry.fetch_bundle(settings, champ["version"]),
                            device=settings.training.device, version=champ["version"])
    try:
        result = evaluation.evaluate_classifier(classifier, fresh, settings.evaluation.batch_size)
    except LabelError as exc:
        raise ValueError(f"champion v{champ['version']} does not know a human label: {exc}") from exc
    out["fresh"] = {k: float(v) for k, v in result.metrics.items()}
    print(f"fresh evaluation: champion v{champ['version']} on {len(fresh)} fresh human labels: "
          f"accuracy {result.metrics['accuracy']:.4f}, macro-F1 {result.metrics['macro_f1']:.4f}"
          + (f" (test: accuracy {champ['test'].get('accuracy', float('nan')):.4f}, "
             f"macro-F1 {champ['test'].get('macro_f1', float('nan')):.4f})" if champ["test"] else ""))
    return out


@step(enable_cache=False)
def evaluate_fresh(
    sync_report: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> Annotated[dict, "fresh_evaluation"]:
    return evaluate_on_fresh(settings_for(config, overrides))
