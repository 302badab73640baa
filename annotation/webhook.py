"""Label Studio webhook events -> labels store (and feedback triggers). Cheap and synchronous.

`handle_event(settings, payload)` is what the service's `/ls/webhook` route calls after checking
the secret header / basic auth. It never trains or loads a model: it validates the payload,
records, replaces or removes annotations in the labels store (idempotent: a replayed or
duplicated event changes nothing; an older version arriving late never overwrites a newer one),
and asks `labelloop.trigger` for a feedback run on START_TRAINING or when
`feedback.webhook_trigger_labels` new labels have arrived since the last run.

Payload shapes are those Label Studio 1.23 sends (see tests/integration for captured ones):
  ANNOTATION_CREATED / ANNOTATION_UPDATED  {"action", "annotation": {...}, "task": {...}, "project": {...}}
  ANNOTATIONS_CREATED                      {"action", "annotation": [...], "task": [...], "project": {...}}
  ANNOTATIONS_DELETED                      {"action", "annotations": [{"id": N}, ...], "project": {...}}
  START_TRAINING (ML backend /webhook)     {"action", "project": {...}}
`ANNOTATION_DELETED` with "annotation": {"id"} is accepted too. Other actions are acknowledged
and ignored. A malformed payload raises `ValueError` (the service answers 400).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from annotation.records import SOURCE, project_id_of, record_from_annotation
from labelloop import trigger
from labelloop.labels_store import INVALID, open_store
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

CREATE_UPDATE = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
DELETE = {"ANNOTATIONS_DELETED", "ANNOTATION_DELETED"}
TRAIN = {"START_TRAINING"}


def _require_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"malformed webhook payload: {what} must be an object")
    return value


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"malformed webhook payload: {what} must be an object or a list")


def _scalar_id(value: Any, what: str) -> Any:
    """An id as the payload gives it (an int, a numeric string, or None): never a list or an
    object, which cannot key anything (a list as 'task' was a TypeError, so a 500)."""
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    raise ValueError(f"malformed webhook payload: {what} must be an integer id, got "
                     f"{type(value).__name__}")


_SCALARS = (str, int, float, type(None))


def _to_record(task_def: Any, project_id: int, ann: dict, task: dict) -> Any:
    """`record_from_annotation`, with any shape it did not foresee reported as bad input, and
    only plain values let through to SQLite."""
    try:
        record = record_from_annotation(task_def, project_id, ann, task, via="webhook")
    except (TypeError, AttributeError, KeyError) as exc:
        raise ValueError(f"malformed webhook payload: annotation {ann.get('id')} has an "
                         f"unexpected shape ({type(exc).__name__}: {str(exc)[:100]})") from None
    for name, value in vars(record).items():
        if name != "extra" and not isinstance(value, _SCALARS):
            raise ValueError(f"malformed webhook payload: annotation {ann.get('id')}: {name} "
                             f"must be a plain value, got {type(value).__name__}")
    return record


def _project(payload: dict[str, Any]) -> int:
    project_id = project_id_of(payload.get("project"))
    if project_id is None:
        raise ValueError("malformed webhook payload: no project id ('project': {'id': N})")
    return project_id


def training_answer(settings: Settings, project_id: int, started: bool) -> dict:
    """What Label Studio shows after "Start training": what happens now and where to follow it."""
    from labelloop import loop_status

    status_url = f"http://{settings.serving.host}:{settings.serving.port}/status"
    if started:
        message = (f"Training run started for project {project_id}. Follow it at {status_url}; "
                   "the project's instructions show the outcome when it ends.")
    else:
        running = next((t for t in loop_status.turns(settings, project_id, limit=1)), None)
        message = ("A training run is already going, so no second one was started: "
                   + loop_status.describe(running) + f". Follow it at {status_url}.")
    return {"message": message, "status_page": status_url}


def handle_event(settings: Settings, payload: dict) -> dict:
    """Apply one Label Studio event; returns a small JSON-able summary of what happened."""
    payload = _require_dict(payload, "the payload")
    action = payload.get("action")
    if not isinstance(action, str) or not action:
        raise ValueError("malformed webhook payload: no 'action'")
    if action in TRAIN:
        project_id = _project(payload)
        started = trigger.request_feedback_run(settings, project_id,
                                               trigger.START_TRAINING_BUTTON)
        return {"action": action, "project": project_id,
                "feedback_run": "started" if started else "already-running",
                **training_answer(settings, project_id, started)}
    if action not in CREATE_UPDATE and action not in DELETE:
        return {"action": action, "ignored": True}

    project_id = _project(payload)
    summary: dict[str, Any] = {"action": action, "project": project_id}
    if action in DELETE:
        items = payload.get("annotations", payload.get("annotation"))
        ids = []
        for item in _as_list(items, "'annotations'"):
            aid = item.get("id") if isinstance(item, dict) else item
            if isinstance(aid, bool) or not isinstance(aid, int):
                raise ValueError("malformed webhook payload: annotation ids must be integers")
            ids.append(aid)
        with open_store(settings) as store:
            outcomes = store.delete_many(SOURCE, project_id, ids, via="webhook")
        summary["outcomes"] = dict(Counter(outcomes))
        return summary

    annotations = _as_list(payload.get("annotation"), "'annotation'")
    tasks = payload.get("task")
    tasks = _as_list(tasks, "'task'") if tasks is not None else []
    tasks_by_id = {_scalar_id(t.get("id"), "task.id"): t for t in tasks if isinstance(t, dict)}
    task_def = task_from_settings(settings)
    records, skipped = [], []
    for ann in annotations:
        ann = _require_dict(ann, "each annotation")
        if isinstance(ann.get("id"), bool) or not isinstance(ann.get("id"), int):
            raise ValueError("malformed webhook payload: annotation without an integer 'id'")
        task_ref = ann.get("task")
        task_id = _scalar_id(task_ref.get("id") if isinstance(task_ref, dict) else task_ref,
                             "annotation.task")
        task = tasks_by_id.get(task_id) or (task_ref if isinstance(task_ref, dict) else None)
        if task is None and len(tasks) == 1 and len(annotations) == 1:
            task = tasks[0]
        ann_project = ann.get("project")
        if task is None:
            skipped.append({"annotation": ann["id"], "reason": f"task {task_id} not in the payload"})
            continue
        task_project = task.get("project")
        if (ann_project is not None and ann_project != project_id) or (
                task_project is not None and task_project != project_id) or (
                task_id is not None and task.get("id") not in (None, task_id)):
            skipped.append({"annotation": ann["id"],
                            "reason": f"task {task_id} does not belong to project {project_id}"})
            continue
        records.append(_to_record(task_def, project_id, ann, task))
    with open_store(settings) as store:
        outcomes = store.upsert_many(records) if records else []
        for rec in records:
            if rec.status == INVALID:
                skipped.append({"annotation": int(rec.annotation_id), "reason": rec.reason})
        summary["outcomes"] = dict(Counter(outcomes))
        threshold = settings.feedback.webhook_trigger_labels
        if threshold > 0:
            # Counted since the last feedback run that consumed labels, or the last run this
            # threshold started, whichever is later: a run that decides to keep the champion
            # does not make every following label start another one.
            mark_key = f"webhook_trigger_seq:{project_id}"
            since = max(store.last_feedback_seq(project_id), store.last_feedback_seq(None),
                        int(store.get_meta(mark_key, "0")))
            seq_now = store.current_seq()
            new = store.new_labels_since(since, project_id)
            summary["new_labels"] = new
            if new >= threshold:
                started = trigger.request_feedback_run(settings, project_id,
                                                       f"webhook: {new} new labels")
                summary["feedback_run"] = "started" if started else "already-running"
                if started:
                    store.set_meta(mark_key, seq_now)
    if skipped:
        summary["skipped"] = skipped
    return summary
