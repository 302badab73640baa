"""Label Studio annotations (webhook payloads and export snapshots) as labels-store records.

The one place that knows Label Studio's annotation shape; the webhook and the export pull both
go through `record_from_annotation`, so they produce identical records for one annotation
version and the store can tell replays from changes.

Generation projects (`task.type: generation`, annotation/config.py): an annotation of an *edit*
task (data {"prompt"}) is the final response, its `<TextArea>` text; the response shown is the
prediction the annotator started from (`parent_prediction`). An annotation of a *compare* task
(data {"prompt", "response_a", "response_b", "version_a", "version_b"}) is a preference: the
`<Pairwise>` side (left = A, right = B) or the `tie` / `both_bad` verdict. An edit
annotation's optional `<Rating>` (1-5 stars of the response shown) is stored with its response.
Both become records through the family's conversion (labelloop/generation/answers.py), which
marks what cannot be trained on (empty response, no choice, identical responses, a rating
outside 1-5) invalid with the reason.
"""

from __future__ import annotations

from typing import Any, Optional

from annotation.config import (
    CHOICES_NAME, PAIRWISE_NAME, PROMPT_KEY, RATING_NAME, RESPONSE_A, RESPONSE_B, RESPONSE_NAME,
    TEXT_KEY, VERDICT_NAME, VERSION_A, VERSION_B, task_prompt,
)
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


def _ours(result: Any, kind: str, from_name: str):
    """The items of a result made by our control `from_name` of type `kind` (items without a
    from_name count: older tools omit it); nothing where the result is not a list."""
    if not isinstance(result, list):
        return
    for item in result:
        if isinstance(item, dict) and item.get("type") == kind and \
                item.get("from_name") in (None, from_name):
            yield item


def chosen(result: Any, from_name: str = CHOICES_NAME) -> Optional[list[str]]:
    """The choices of our <Choices> control in an annotation/prediction result, or None."""
    for item in _ours(result, "choices", from_name):
        value = item.get("value") or {}
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list):
            return [str(c) for c in choices]
    return None


def written(result: Any) -> Optional[str]:
    """The text of our <TextArea> in a result (its lines joined), or None when it has none."""
    for item in _ours(result, "textarea", RESPONSE_NAME):
        value = item.get("value") or {}
        text = value.get("text") if isinstance(value, dict) else None
        if isinstance(text, str):
            return text
        if isinstance(text, list) and all(isinstance(t, str) for t in text):
            return "\n".join(text)
    return None


def picked(result: Any) -> Optional[str]:
    """The side of our <Pairwise> in a result: "a" (left), "b" (right), or None."""
    for item in _ours(result, "pairwise", PAIRWISE_NAME):
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        side = value.get("selected", item.get("selected"))
        return {"left": "a", "right": "b"}.get(side)
    return None


def rated(result: Any) -> Any:
    """The value of our <Rating> in a result (as sent: checked by the conversion), or None
    when the annotator gave none."""
    for item in _ours(result, "rating", RATING_NAME):
        value = item.get("value")
        return value.get("rating") if isinstance(value, dict) else value
    return None


def _prediction_shown(annotation: dict[str, Any], task: dict[str, Any]) -> Optional[dict]:
    # Label Studio stores the prediction the annotator saw on the annotation itself; older
    # exports only name it (`parent_prediction`), so look it up among the task's predictions.
    pred = annotation.get("prediction") if isinstance(annotation.get("prediction"), dict) else None
    parent = _id_of(annotation.get("parent_prediction"))
    if not pred and parent is not None:
        for p in task.get("predictions") or []:
            if isinstance(p, dict) and _id_of(p) == parent:
                pred = p
                break
    return pred or None


def shown_prediction(annotation: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The prediction the annotator saw: model version, label (the choice, or the response of
    a generation edit task), score (whatever is known)."""
    pred = _prediction_shown(annotation, task)
    if not pred:
        return {}
    labels = chosen(pred.get("result"))
    response = written(pred.get("result"))
    score = pred.get("score")
    return {
        "model_version": None if pred.get("model_version") in (None, "") else str(pred["model_version"]),
        "shown_label": labels[0] if labels else response,
        "shown_score": float(score) if isinstance(score, (int, float))
        and not isinstance(score, bool) else None,
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
    results = annotation.get("result") or []
    origins = {item.get("origin") for item in results if isinstance(item, dict)}
    if "prediction-changed" in origins:
        base["changed"] = True
    elif "prediction" in origins:
        base["changed"] = False
    data = (task or {}).get("data")
    data = data if isinstance(data, dict) else {}
    if getattr(task_def, "type", None) == "generation":
        return _generation_record(annotation, task or {}, data, results, base)
    base.update(shown_prediction(annotation, task or {}))
    text = data.get(TEXT_KEY)
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


def _str(value: Any) -> Optional[str]:
    return None if value is None or value == "" else str(value)


def _generation_record(annotation: dict[str, Any], task: dict[str, Any], data: dict[str, Any],
                       results: list, base: dict[str, Any]) -> LabelRecord:
    """An edit annotation as a `response` record, a compare annotation as a `preference`."""
    from labelloop.generation.answers import preference_record, response_record

    prompt = text = task_prompt(data)
    compare = RESPONSE_A in data or RESPONSE_B in data
    kind = "preference" if compare else "response"
    if prompt is None or not prompt.strip():
        return LabelRecord.invalid(
            f"task {base['task_id']} has no '{PROMPT_KEY}' in its data (not a task of an edit or "
            "compare project)", kind=kind, **base)
    if compare:
        base["model_version"] = _str(data.get(VERSION_A))
        if annotation.get("was_cancelled"):
            return LabelRecord.invalid("skipped by the annotator (cancelled)", text=text,
                                       kind=kind, **base)
        side, verdict = picked(results), chosen(results, VERDICT_NAME)
        if side and verdict:
            return LabelRecord.invalid(
                f"both a side ({side}) and {verdict[0]!r} were chosen: one answer only",
                text=text, kind=kind, **base)
        choice = side or (verdict[0] if verdict and len(verdict) == 1 else None)
        return preference_record(prompt, data.get(RESPONSE_A), data.get(RESPONSE_B), choice,
                                 version_a=base["model_version"],
                                 version_b=_str(data.get(VERSION_B)), **base)
    shown = shown_prediction(annotation, task)
    shown_text = shown.pop("shown_label", None)
    base.update(shown)
    if annotation.get("was_cancelled"):
        return LabelRecord.invalid("skipped by the annotator (cancelled)", text=text, kind=kind,
                                   shown_label=shown_text, **base)
    return response_record(prompt, written(results), shown_text, rating=rated(results), **base)
