"""Step: load and validate the labelled data and split it (labelloop.data.load_splits): by text
hash (frozen test split), or the configured test source. Hands on the provenance record
(labelloop.provenance) that the bundle, the registry version and the MLflow run carry."""

from __future__ import annotations

from typing import Annotated, Any, Optional, Tuple

import pandas as pd
from zenml import log_metadata, step

from labelloop import data, provenance
from labelloop.cleaning import Cleaning
from labelloop.modeling import resolve_base_model
from labelloop.tasks import task_from_settings
from pipelines.steps.common import settings_for


@step
def load_data(
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    include_human_labels: bool = False,
    human_labels_max_seq: Optional[int] = None,
) -> Tuple[Annotated[pd.DataFrame, "train"], Annotated[pd.DataFrame, "test"],
           Annotated[pd.DataFrame, "validation"], Annotated[dict, "provenance"]]:
    """Training and test rows, the validation rows (empty without any: dataset.validation or
    dataset.validation_fraction) and the provenance record."""
    settings = settings_for(config, overrides)
    task = task_from_settings(settings)
    if task.type == "generation":
        return _generation_rows(settings, include_human_labels)
    resolve_base_model(settings.model.base)  # a bad base model fails here, before training
    splits = data.load_splits(settings.dataset, task)
    train, test = splits.train, splits.test
    validation = splits.validation if splits.validation is not None \
        else pd.DataFrame({"text": [], "label": []})
    cleaning = Cleaning.from_settings(settings.dataset.cleaning)
    human, labels_seq = None, None
    if include_human_labels:
        from labelloop import labels_store

        with labels_store.open_store(settings) as store:
            labels_seq = human_labels_max_seq if human_labels_max_seq is not None \
                else store.current_seq()
        human = labels_store.training_rows(settings, max_seq=labels_seq)
        train = data.merge_human_labels(train, human, test, cleaning)
    if train.empty or test.empty:
        raise data.DataError(
            f"split left {len(train)} training and {len(test)} test rows; need both non-empty "
            "(more data, or another dataset.test_fraction)"
        )
    record = provenance.record(splits, train, human, labels_seq, cleaning,
                               settings.model.truncation)
    log_metadata({
        "train_rows": len(train), "test_rows": len(test), "human_rows": record["human_rows"],
        "train_digest": record["dataset_digest"], "test_digest": record["test_digest"],
        "source_digest": record["source_digest"], "validation_rows": len(validation),
    })
    for line in splits.summary_lines(settings.dataset.duplicates):
        print(f"data: {line}")
    print(f"data: {len(train)} training rows ({record['human_rows']} human labels), "
          f"{len(test)} test rows; cleaning: {cleaning.describe()}")
    return train, test, validation, record


def _generation_rows(settings, include_human_labels: bool):
    from labelloop.generation import steps as generation
    from labelloop.generation.base import cache_root, resolve_causal_base

    resolve_causal_base(settings.model.base, cache_root(settings))  # converted once if GGUF
    train, test, meta = generation.load(settings)
    if include_human_labels:
        print("data: human responses for generation are not collected yet; base rows only")
    lines = meta.pop("summary")
    log_metadata({k: v for k, v in meta.items() if k != "sources"})
    for line in lines:
        print(f"data: {line}")
    # no validation rows for generation; with its columns, so ZenML can describe the empty table
    # (a frame without columns made it warn "Failed to save artifact visualizations")
    return train, test, pd.DataFrame({"prompt": [], "response": []}), \
        {"family": "generation", **meta}
