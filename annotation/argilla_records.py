"""Argilla responses (webhook payloads and REST listings) as labels-store records.

The one place that knows Argilla's response shape; the webhook and the pull sync both go through
`record_from_response`, so one response version gives one identical record whichever way it
came, and the store tells replays from changes. Kept free of the SDK: the service imports it.

A response: {"id", "values": {"label": {"value": ...}}, "status": submitted|discarded|draft,
"user_id" or "user": {"id", "username"}, "inserted_at", "updated_at"}; its record: {"id",
"external_id", "fields": {"text"}, "metadata": {"model_version", "suggested_label",
"suggested_score", ...}}. The suggestion shown comes from the record's metadata (written with the
suggestion by annotation/argilla.py), because a webhook's record carries metadata, not
suggestions.
"""

from __future__ import annotations

from typing import Any, Optional

from labelloop.labels_store import LabelRecord
from labelloop.tasks import LabelError

SOURCE = "argilla"
TEXT_FIELD = "text"
LABEL_QUESTION = "label"
STATUSES = ("submitted", "discarded", "draft")


def _str_or_none(value: Any) -> Optional[str]:
    return None if value is None or value == "" else str(value)


def shown_suggestion(record: dict[str, Any]) -> dict[str, Any]:
    meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    score = meta.get("suggested_score")
    return {"model_version": _str_or_none(meta.get("model_version")),
            "shown_label": _str_or_none(meta.get("suggested_label")),
            "shown_score": float(score) if isinstance(score, (int, float))
            and not isinstance(score, bool) else None}


def answer_of(values: Any) -> Any:
    """The label question's value in a response's `values` (None when absent)."""
    if not isinstance(values, dict):
        return None
    item = values.get(LABEL_QUESTION)
    return item.get("value") if isinstance(item, dict) else None


def record_from_response(task_def: Any, dataset_id: str, response: dict[str, Any],
                         record: dict[str, Any], user: Optional[dict[str, Any]],
                         via: str) -> LabelRecord:
    """One Argilla response (+ its record) as a labels-store record; not-trainable ones
    (discarded, draft, empty, a value outside the labels) carry the reason. A draft is marked
    `extra["draft"]`: callers store it only when it replaces an answer the store holds."""
    response_id = _str_or_none(response.get("id"))
    if response_id is None:
        raise ValueError("response without an 'id'")
    user = user or {}
    base = {
        "source": SOURCE, "project": str(dataset_id), "annotation_id": response_id,
        "task_id": _str_or_none(record.get("id")),
        "annotator": _str_or_none(user.get("username")) or _str_or_none(
            user.get("id") or response.get("user_id")),
        "created_at": _str_or_none(response.get("inserted_at")),
        "updated_at": _str_or_none(response.get("updated_at") or response.get("inserted_at")),
        "via": via,
    }
    base.update(shown_suggestion(record))
    fields = record.get("fields") if isinstance(record.get("fields"), dict) else {}
    text = fields.get(TEXT_FIELD)
    text = text if isinstance(text, str) else None
    status = response.get("status")
    if status == "discarded":
        return LabelRecord.invalid("discarded by the annotator", text=text, **base)
    if status == "draft":
        rec = LabelRecord.invalid("draft (not submitted)", text=text, **base)
        rec.extra["draft"] = True
        return rec
    if status != "submitted":
        return LabelRecord.invalid(f"unknown response status {status!r}", text=text, **base)
    if not text or not text.strip():
        return LabelRecord.invalid(f"record {base['task_id']} has no {TEXT_FIELD!r} field (not a "
                                   "record of this dataset's shape)", **base)
    answer = answer_of(response.get("values"))
    if answer is None or answer == "" or answer == []:
        return LabelRecord.invalid("empty response (no label given)", text=text, **base)
    try:
        row = task_def.row_from_answer(text, answer)
    except LabelError as exc:
        return LabelRecord.invalid(f"bad label: {exc}", text=text, **base)
    return LabelRecord(text=row["text"], label=row["label"], **base)
