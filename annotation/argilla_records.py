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

Generation datasets (`task.type: generation`): the record's fields are `prompt`, `response_a`
(the champion's response, also the suggestion of the `response` text question) and `response_b`
(a second response to compare); its metadata `suggested_label` holds the response shown and
`version_b` the model version of response B. A prompt holding earlier turns shows them as
"Role: text" paragraphs in `prompt`, its exact text kept in metadata `conversation`
(`record_prompt` reads it back). `records_from_response` turns one response into
its rows (the family's conversion: labelloop/generation/answers.py).
"""

from __future__ import annotations

from typing import Any, Optional

from labelloop.labels_store import LabelRecord
from labelloop.tasks import LabelError

SOURCE = "argilla"
TEXT_FIELD = "text"
LABEL_QUESTION = "label"
STATUSES = ("submitted", "discarded", "draft")
# Generation datasets: the prompt, the two responses compared, and the two questions.
PROMPT_FIELD, RESPONSE_A, RESPONSE_B = "prompt", "response_a", "response_b"
RESPONSE_QUESTION, PREFERENCE_QUESTION = "response", "preference"
CONVERSATION_METADATA = "conversation"  # the exact prompt, when `prompt` shows its turns
# A generation response gives up to two labels-store rows: its edited response (the response's
# id) and, when the annotator compared the two responses, its preference (this suffix).
PREFERENCE_SUFFIX = ":preference"


def _str_or_none(value: Any) -> Optional[str]:
    return None if value is None or value == "" else str(value)


def shown_suggestion(record: dict[str, Any]) -> dict[str, Any]:
    meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    score = meta.get("suggested_score")
    return {"model_version": _str_or_none(meta.get("model_version")),
            "shown_label": _str_or_none(meta.get("suggested_label")),
            "shown_score": float(score) if isinstance(score, (int, float))
            and not isinstance(score, bool) else None}


def record_prompt(record: dict[str, Any]) -> Optional[str]:
    """The exact prompt of a generation record (its `prompt` field, or the conversation it
    shows; labelloop.generation.chat.shown_prompt), or None."""
    from labelloop.generation.chat import prompt_from

    fields = record.get("fields") if isinstance(record.get("fields"), dict) else {}
    meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    return prompt_from(fields.get(PROMPT_FIELD), meta.get(CONVERSATION_METADATA))


def answer_of(values: Any, question: str = LABEL_QUESTION) -> Any:
    """A question's value in a response's `values` (None when absent)."""
    if not isinstance(values, dict):
        return None
    item = values.get(question)
    return item.get("value") if isinstance(item, dict) else None


def annotation_ids(response_id: str) -> list[str]:
    """Every labels-store row one response can give (a deleted response takes them all)."""
    return [response_id, response_id + PREFERENCE_SUFFIX]


def records_from_response(task_def: Any, dataset_id: str, response: dict[str, Any],
                          record: dict[str, Any], user: Optional[dict[str, Any]],
                          via: str) -> list[LabelRecord]:
    """One Argilla response as its labels-store records: one for classification; for
    generation the final response, plus the preference when the annotator gave one."""
    if getattr(task_def, "type", None) != "generation":
        return [record_from_response(task_def, dataset_id, response, record, user, via)]
    return generation_records(dataset_id, response, record, user, via)


def record_from_response(task_def: Any, dataset_id: str, response: dict[str, Any],
                         record: dict[str, Any], user: Optional[dict[str, Any]],
                         via: str) -> LabelRecord:
    """One Argilla response (+ its record) as a labels-store record; not-trainable ones
    (discarded, draft, empty, a value outside the labels) carry the reason. A draft is marked
    `extra["draft"]`: callers store it only when it replaces an answer the store holds."""
    base = _base(dataset_id, response, record, user, via)
    base.update(shown_suggestion(record))
    fields = record.get("fields") if isinstance(record.get("fields"), dict) else {}
    text = fields.get(TEXT_FIELD)
    text = text if isinstance(text, str) else None
    not_submitted = _not_submitted(response, text, base)
    if not_submitted is not None:
        return not_submitted
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


def generation_records(dataset_id: str, response: dict[str, Any], record: dict[str, Any],
                       user: Optional[dict[str, Any]], via: str) -> list[LabelRecord]:
    """A generation response: the final response (kind `response`; the record's suggestion,
    kept in its metadata, is what the annotator was shown) and, if the preference question was
    answered, the comparison of response A and B (kind `preference`). The conversions (empty
    response, no choice, identical responses: invalid) are the family's, in
    labelloop/generation/answers.py, shared with Label Studio."""
    from labelloop.generation.answers import preference_record, response_record

    base = _base(dataset_id, response, record, user, via)
    shown = shown_suggestion(record)
    base["model_version"] = shown["model_version"]
    fields = record.get("fields") if isinstance(record.get("fields"), dict) else {}
    prompt = record_prompt(record)
    not_submitted = _not_submitted(response, prompt, {**base, "kind": "response",
                                                      "shown_label": shown["shown_label"]})
    if not_submitted is not None:
        return [not_submitted]
    values = response.get("values")
    out = [response_record(prompt, answer_of(values, RESPONSE_QUESTION), shown["shown_label"],
                           **base)]
    choice = answer_of(values, PREFERENCE_QUESTION)
    if choice is not None:
        meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        out.append(preference_record(
            prompt, fields.get(RESPONSE_A), fields.get(RESPONSE_B), choice,
            version_a=shown["model_version"], version_b=_str_or_none(meta.get("version_b")),
            **{**base, "annotation_id": base["annotation_id"] + PREFERENCE_SUFFIX}))
    return out


def _base(dataset_id: str, response: dict[str, Any], record: dict[str, Any],
          user: Optional[dict[str, Any]], via: str) -> dict[str, Any]:
    response_id = _str_or_none(response.get("id"))
    if response_id is None:
        raise ValueError("response without an 'id'")
    user = user or {}
    return {
        "source": SOURCE, "project": str(dataset_id), "annotation_id": response_id,
        "task_id": _str_or_none(record.get("id")),
        "annotator": _str_or_none(user.get("username")) or _str_or_none(
            user.get("id") or response.get("user_id")),
        "created_at": _str_or_none(response.get("inserted_at")),
        "updated_at": _str_or_none(response.get("updated_at") or response.get("inserted_at")),
        "via": via,
    }


def _not_submitted(response: dict[str, Any], text: Optional[str],
                   base: dict[str, Any]) -> Optional[LabelRecord]:
    """The record of a response that is not submitted (discarded, draft, unknown status), kept
    as not trainable; None for a submitted one."""
    status = response.get("status")
    if status == "discarded":
        return LabelRecord.invalid("discarded by the annotator", text=text, **base)
    if status == "draft":
        rec = LabelRecord.invalid("draft (not submitted)", text=text, **base)
        rec.extra["draft"] = True
        return rec
    if status != "submitted":
        return LabelRecord.invalid(f"unknown response status {status!r}", text=text, **base)
    return None
