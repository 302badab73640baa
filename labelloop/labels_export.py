"""`labelloop labels export`: the human labels out of the labels store, as CSV or JSONL.

One row per annotation (not per text: two annotators on one task are two rows), with its
provenance: source, project, task id, annotation id, annotator, created/updated times, the model
version, label and score that were shown (when the store knows them), whether the annotator
changed the prediction, and through which channel it arrived. Generation answers add what
kind of answer a row is (`kind`: label, response, preference) and its own columns: the
preference's `choice`, `rejected` response and the versions of both sides; the response's
`edit_distance` from the one shown and the annotator's optional `rating` of it (1-5).
Where a task carries several
annotations the per-task inter-annotator agreement is added (`task_annotations`,
`task_majority_label`, `task_agreement`; see annotation/agreement.py).

The file is written atomically: into a temporary file beside the target, flushed to disk, then
renamed over it, so an error (or a kill) midway leaves either the old file or none, never half of
a new one. A bad format or path raises `LabelsExportError` before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from labelloop.labels_store import ACTIVE, INVALID, LabelsStore
from labelloop.settings import Settings

FORMATS = ("csv", "jsonl")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STATUSES = ("active", "all")  # all = active + invalid (deleted rows hold no label: never exported)

COLUMNS = [
    "source", "project", "task_id", "annotation_id", "annotator", "created_at", "updated_at",
    "text", "label", "status", "reason", "model_version", "shown_label", "shown_score",
    "changed", "via", "task_annotations", "task_majority_label", "task_agreement",
    # generation answers (labelloop/labels_store.py); empty for classification labels
    "kind", "choice", "rejected", "chosen_version", "rejected_version", "edit_distance",
    "rating",
]


class LabelsExportError(ValueError):
    """The export cannot be done as asked (format, path, missing store): nothing was written."""


def resolve_format(path: Path, fmt: Optional[str]) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise LabelsExportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    try:
        return SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise LabelsExportError(
            f"cannot tell the format from {path.name!r}: name the file .csv or .jsonl, or pass "
            "--format csv|jsonl") from None


def check_target(path: Path) -> None:
    """Refuse a target we could not replace atomically, before reading anything."""
    if path.is_dir():
        raise LabelsExportError(f"{path} is a directory: give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise LabelsExportError(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LabelsExportError(f"directory {parent} is not writable")


def label_rows(settings: Settings, status: str = "active", source: Optional[str] = None,
               project: Any = None) -> pd.DataFrame:
    """The exported table: annotations with provenance and per-task agreement, in store order."""
    from annotation.agreement import task_agreement

    if status not in STATUSES:
        raise LabelsExportError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    path = settings.labels_path
    if not path.is_file():  # do not create an empty store as a side effect of reading
        raise LabelsExportError(
            f"no labels store at {path}: nothing annotated and synced yet, or another data_dir "
            "(check --config)")
    with LabelsStore(path) as store:
        rows = store.rows(source=source, project=project)
    rows = rows[rows["status"].isin([ACTIVE] if status == "active" else [ACTIVE, INVALID])]
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    tasks = task_agreement(rows[rows["status"] == ACTIVE]).rename(columns={
        "annotations": "task_annotations", "majority_label": "task_majority_label"})
    keyed = rows.assign(
        _task=rows["task_id"].where(rows["task_id"].notna(), "text:" + rows["text"].astype(str)))
    merged = keyed.merge(
        tasks[["source", "project", "task_id", "task_annotations", "task_majority_label",
               "task_agreement"]].rename(columns={"task_id": "_task"}),
        on=["source", "project", "_task"], how="left")
    # Whole numbers stay whole where some rows lack them ("1", not "1.0", in a CSV).
    for col in ("changed", "task_annotations", "rating"):
        merged[col] = merged[col].astype("Int64")
    return merged[COLUMNS].reset_index(drop=True)


def _plain(value: Any) -> Any:
    """JSON-safe scalars: NaN/None -> null, numpy numbers -> Python numbers."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_csv(df: pd.DataFrame, f) -> None:
    df.to_csv(f, index=False)


def _write_jsonl(df: pd.DataFrame, f) -> None:
    for record in df.to_dict(orient="records"):
        f.write(json.dumps({k: _plain(v) for k, v in record.items()}, ensure_ascii=False) + "\n")


WRITERS: dict[str, Callable[[pd.DataFrame, Any], None]] = {"csv": _write_csv, "jsonl": _write_jsonl}


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """`write(f)` into a temporary file in the target's directory, fsync, rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; an export is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_labels(settings: Settings, output: str | os.PathLike, fmt: Optional[str] = None,
                  status: str = "active", source: Optional[str] = None,
                  project: Any = None) -> dict[str, Any]:
    """Write the labels table to `output`; returns {"path", "format", "rows", "tasks", ...}."""
    path = Path(output).expanduser()
    check_target(path)
    fmt = resolve_format(path, fmt)
    df = label_rows(settings, status=status, source=source, project=project)
    write_atomic(path, lambda f: WRITERS[fmt](df, f))
    multi = df.drop_duplicates(["source", "project", "task_id"])
    return {
        "path": str(path.resolve()), "format": fmt, "status": status, "rows": int(len(df)),
        "tasks": int(len(multi)),
        "tasks_with_several_annotations": int((multi["task_annotations"] >= 2).sum())
        if len(multi) else 0,
    }


def agreement_report(settings: Settings, source: Optional[str] = None, project: Any = None,
                     limit: int = 20) -> dict[str, Any]:
    """`labelloop labels agreement`: the summary, plus the disagreeing tasks (most split first)."""
    from annotation.agreement import annotator_agreement_summary, task_agreement

    rows = label_rows(settings, status="active", source=source, project=project)
    summary = annotator_agreement_summary(rows)
    tasks = task_agreement(rows)
    split = tasks[(tasks["annotations"] >= 2) & (tasks["task_agreement"] < 1)] \
        if not tasks.empty else tasks
    split = split.sort_values(["task_agreement", "annotations"], ascending=[True, False])
    summary["disagreements"] = [
        {k: _plain(v) for k, v in r.items()}
        for r in split.head(limit)[["source", "project", "task_id", "annotations", "annotators",
                                    "majority_label", "task_agreement", "labels"]]
        .to_dict(orient="records")
    ]
    return summary
