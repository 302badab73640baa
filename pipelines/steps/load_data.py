"""Step: load and validate the labelled data and split it by text hash (frozen test split)."""

from __future__ import annotations

from typing import Annotated, Any, Optional, Tuple

import pandas as pd
from zenml import log_metadata, step

from labelloop import data
from labelloop.modeling import resolve_base_model
from labelloop.tasks import task_from_settings
from pipelines.steps.common import settings_for


@step
def load_data(
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    include_human_labels: bool = False,
    human_labels_max_seq: Optional[int] = None,
) -> Tuple[Annotated[pd.DataFrame, "train"], Annotated[pd.DataFrame, "test"]]:
    settings = settings_for(config, overrides)
    task = task_from_settings(settings)
    resolve_base_model(settings.model.base)  # a bad base model fails here, before training
    df = data.load_labelled(settings.dataset, task)
    train, test = data.frozen_split(df, settings.dataset)
    human_rows = 0
    if include_human_labels:
        from labelloop import labels_store

        human = labels_store.training_rows(settings, max_seq=human_labels_max_seq)
        human_rows = len(human)
        train = data.merge_human_labels(train, human, test)
    if train.empty or test.empty:
        raise data.DataError(
            f"split left {len(train)} training and {len(test)} test rows; need both non-empty "
            "(more data, or another dataset.test_fraction)"
        )
    log_metadata({
        "train_rows": len(train), "test_rows": len(test), "human_rows": human_rows,
        "train_digest": data.digest(train), "test_digest": data.digest(test),
    })
    print(f"data: {len(train)} training rows ({human_rows} human labels), {len(test)} test rows")
    return train, test
