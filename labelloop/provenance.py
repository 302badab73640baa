"""Provenance: exactly what trained a model version.

`record` is written into every bundle (`labelloop.json`): the sources with their content digests
(labelloop/sources.py), one digest over all of them, the digest of the test split, the digest
of the human labels trained on and the labels store's sequence number they were read at, and
how texts were cleaned and truncated. `version_tags` puts the digests on the registry version
(`labelloop status` shows them, `/metadata` shows the bundle's record), and `log_inputs` logs
the training and test rows as MLflow dataset inputs (`mlflow.data`, source and digest), the way
MLflow's UI and search show a run's data.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import pandas as pd

from labelloop import data
from labelloop.cleaning import Cleaning

SOURCE_DIGEST_TAG = "labelloop.source_digest"
HUMAN_DIGEST_TAG = "labelloop.human_digest"
TEST_DIGEST_TAG = "test_digest"
LABELS_SEQ_TAG = "labelloop.labels_seq"

# What `/metadata` and `labelloop status` show of a bundle's record.
META_KEYS = ("sources", "source_digest", "test_digest", "human_digest", "human_rows",
             "labels_seq", "dataset_digest", "cleaning", "truncation", "sample_weights",
             "decision_bias")


def record(splits: "data.Splits", train: pd.DataFrame, human: Optional[pd.DataFrame],
           labels_seq: Optional[int], cleaning: Cleaning, truncation: str) -> dict[str, Any]:
    """The provenance of one training run (JSON-able: it travels as a ZenML artifact)."""
    human = human if human is not None else pd.DataFrame(columns=["text", "label"])
    return {
        "sources": [s.to_dict() for s in splits.sources],
        "source_digest": splits.source_digest,
        "test_digest": data.digest(splits.test),
        "test_rows": len(splits.test),
        "test_from_source": splits.test_from_source,
        "human_digest": data.human_digest(human),
        "human_rows": len(human),
        "labels_seq": labels_seq,
        "dataset_digest": data.digest(train),
        "train_rows": len(train),
        "cleaning": cleaning.to_dict(),
        "truncation": truncation,
    }


def version_tags(rec: dict[str, Any]) -> dict[str, str]:
    """Registry tags of a version trained with `rec`. The labels-store seq is tagged only when
    human labels were trained on: the feedback loop reads it as "labels seen up to here"."""
    tags = {tag: str(rec[key]) for tag, key in ((SOURCE_DIGEST_TAG, "source_digest"),
                                                (TEST_DIGEST_TAG, "test_digest"),
                                                (HUMAN_DIGEST_TAG, "human_digest"))
            if rec.get(key) is not None}  # (a family that records none gets none)
    if rec.get("labels_seq") is not None and rec.get("human_rows"):
        tags[LABELS_SEQ_TAG] = str(rec["labels_seq"])
    return tags


def shown(meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance part of a bundle's metadata (None where an older bundle has none)."""
    return {key: meta.get(key) for key in META_KEYS}


def _sql_source(uri: str):
    """An MLflow dataset source for rows read with SQL (MLflow resolves only paths and URLs)."""
    from mlflow.data.dataset_source import DatasetSource

    class SQLDatasetSource(DatasetSource):
        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "sql"

        def load(self, **kwargs):  # pragma: no cover - labelloop reads it itself
            raise NotImplementedError

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> "SQLDatasetSource":
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]) -> "SQLDatasetSource":
            return cls(source_dict["uri"])

    return SQLDatasetSource(uri)


def _dataset(df: pd.DataFrame, name: str, source: dict[str, Any], digest: str):
    import mlflow.data

    src: Any = _sql_source(source["uri"]) if source["kind"] == "sql" else source["uri"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow warns when it guesses a local path's source
        return mlflow.data.from_pandas(df[["text", "label"]], source=src, name=name,
                                       targets="label", digest=digest)


def log_inputs(rec: dict[str, Any], train: pd.DataFrame, test: pd.DataFrame) -> None:
    """The run's training and test rows as MLflow dataset inputs, each naming its source (and
    that source's content digest) and carrying the rows' digest."""
    import mlflow

    by_role = {s["role"]: s for s in rec["sources"]}
    train_src = by_role["train"]
    test_src = by_role.get("test", train_src)
    for name, df, src, digest in (("train", train, train_src, rec["dataset_digest"]),
                                  ("test", test, test_src, rec["test_digest"])):
        mlflow.log_input(_dataset(df, name, src, digest), context=name,
                         tags={"source_digest": src["digest"][:16], "source_kind": src["kind"],
                               "rows": str(len(df))})
