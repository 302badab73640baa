"""Label Studio annotations (webhook payloads and export snapshots) as labels-store records.

The one place that knows Label Studio's annotation shape; the webhook and the export pull both
go through `record_from_annotation`, so they produce identical records for one annotation
version and the store can tell replays from changes.
"""

from __future__ import annotations

from typing import Any, Optional

from annotation.config import CHOICES_NAME, TEXT_KEY
from labelloop.labels_store import LabelRecord
from labelloop.tasks import LabelError

SOURCE = "label-studio"


def project_id_of(value: Any) -> Optional[int]:
    """A project id from a webhook's project dict, an int, or the ML backend's "12.1700000"."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        head = value.split(".", 1)[0].strip()
        if head.isdigit():
            return int(head)
    return None


def _id_of(value: Any) -> Optional[int]:
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _annotator(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        return value.get("email") or (str(value["id"]) if value.get("id") is not None else None)
    return None if value is None else str(value)


def chosen(result: Any) -> Optional[list[str]]:
    """The choices of our <Choices> control in an annotation/prediction result, or None."""
    if not isinstance(result, list):
        return None
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        if item.get("from_name") not in (None, CHOICES_NAME):
            continue
        value = item.get("value") or {}
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list):
            return [str(c) for c in choices]
    return None


def shown_prediction(annotation: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The prediction the annotator saw: model version, label, score (whatever is known)."""
    # Label Studio stores the prediction the annotator saw on the annotation itself; older
    # exports only name it (`parent_prediction`), so look it up among the task's predictions.
    pred = annotation.get("prediction") if isinstance(annotation.get("prediction"), dict) else None
    parent = _id_of(annotation.get("parent_prediction"))
    if not pred and parent is not None:
        for p in task.get("predictions") or []:
            if isinstance(p, dict) and _id_of(p) == parent:
                pred = p
                break
    if not pred:
        return {}
    labels = chosen(pred.get("result"))
    score = pred.get("score")
    return {
        "model_version": None if pred.get("model_version") in (None, "") else str(pred["model_version"]),
        "shown_label": labels[0] if labels else None,
        "shown_score": float(score) if isinstance(score, (int, float)) else None,
    }


def record_from_annotation(
    task_def: Any, project_id: int, annotation: dict[str, Any], task: dict[str, Any],
    via: str,
) -> LabelRecord:
    """One LS annotation (+ its task) as a record; invalid ones carry the reason."""
    annotation_id = _id_of(annotation)
    if annotation_id is None:
        raise ValueError("annotation without an integer 'id'")
    task_id = _id_of(task) if task else _id_of(annotation.get("task"))
    base = {
        "source": SOURCE, "project": str(project_id), "annotation_id": str(annotation_id),
        "task_id": None if task_id is None else str(task_id),
        "annotator": _annotator(annotation.get("completed_by")),
        "created_at": annotation.get("created_at"),
        "updated_at": annotation.get("updated_at") or annotation.get("created_at"),
        "via": via,
    }
    base.update(shown_prediction(annotation, task or {}))
    results = annotation.get("result") or []
    origins = {item.get("origin") for item in results if isinstance(item, dict)}
    if "prediction-changed" in origins:
        base["changed"] = True
    elif "prediction" in origins:
        base["changed"] = False
    data = (task or {}).get("data")
    text = data.get(TEXT_KEY) if isinstance(data, dict) else None
    if annotation.get("was_cancelled"):
        return LabelRecord.invalid("skipped by the annotator (cancelled)", text=text, **base)
    if not isinstance(text, str) or not text.strip():
        return LabelRecord.invalid(
            f"task {task_id} has no '{TEXT_KEY}' in its data (not a task of this project's "
            "shape)", **base)
    choices = chosen(results)
    if not choices:
        return LabelRecord.invalid("empty result (no choice made)", text=text, **base)
    try:
        row = task_def.row_from_answer(text, choices)
    except LabelError as exc:
        return LabelRecord.invalid(f"bad label: {exc}", text=text, **base)
    return LabelRecord(text=row["text"], label=row["label"], **base)
