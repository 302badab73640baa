"""Argilla webhook deliveries -> labels store (and feedback triggers). Cheap and synchronous.

Argilla 2.x signs each delivery per the Standard Webhooks scheme (headers `webhook-id`,
`webhook-timestamp`, `webhook-signature`; HMAC-SHA256 with the webhook's own secret, which
Argilla generates). `annotation.argilla.ensure_webhook` registers the service's
`/argilla/webhook` and keeps that secret in `<data_dir>/argilla/webhook.json` (mode 0600), where
`verify` reads it. A delivery older than five minutes is refused (the scheme's replay window);
within it, a replayed or reordered delivery changes nothing, because every write goes through
the labels store's ordering (newer `updated_at` wins, identical content is a no-op, a deleted
response stays deleted).

Events (body `{"type", "version", "timestamp", "data"}`):
  response.created / response.updated   data = the response, with its record (fields, metadata,
                                        dataset) and user
  response.deleted                      data = the response as it was
  record.deleted                        data = the record: its responses go too
  others (record.completed, dataset.*)  acknowledged, nothing to do
A delivery for a dataset the project does not manage is skipped and reported.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from annotation.argilla_records import SOURCE, annotation_ids, records_from_response
from labelloop import trigger
from labelloop.labels_store import DELETED, INVALID, open_store, parse_time
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

EVENTS = ["response.created", "response.updated", "response.deleted", "record.deleted",
          "record.completed"]
RESPONSE_WRITE = {"response.created", "response.updated"}


class WebhookAuthError(Exception):
    """An unsigned, wrongly signed or stale delivery (or no webhook configured): 401/403."""

    def __init__(self, status: int, message: str, wrong: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.wrong = wrong  # credentials sent and wrong: counted by the service's throttle


def hook_file(settings: Settings) -> Path:
    return settings.data_path / "argilla" / "webhook.json"


def read_hook(settings: Settings) -> Optional[dict[str, Any]]:
    try:
        info = json.loads(hook_file(settings).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("secret") else None


def write_hook(settings: Settings, info: dict[str, Any]) -> None:
    path = hook_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)  # the service never reads half a file


def verify(settings: Settings, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The delivery's JSON after checking its Standard Webhooks signature; `WebhookAuthError`
    otherwise, `ValueError` for a signed body that is not an event object."""
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    hook = read_hook(settings)
    if hook is None:
        raise WebhookAuthError(403, "no Argilla webhook is configured here: run `labelloop "
                                    "argilla setup` (it registers the webhook and keeps its secret)")
    wanted = ("webhook-id", "webhook-timestamp", "webhook-signature")
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in wanted if not lower.get(h)]
    if missing:
        raise WebhookAuthError(401, f"unsigned delivery: missing {', '.join(missing)} "
                                    "(Standard Webhooks headers)")
    try:
        Webhook(hook["secret"]).verify(body, {h: lower[h] for h in wanted})
    except WebhookVerificationError as exc:
        raise WebhookAuthError(403, f"webhook signature check failed: {exc}", wrong=True) from None
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("malformed webhook body: not JSON") from None
    if not isinstance(event, dict):
        raise ValueError("malformed webhook body: expected a JSON object")
    return event


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"malformed Argilla event: {what} must be an object")
    return value


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"malformed Argilla event: {what} must be a string id")
    return value


def handle_event(settings: Settings, event: dict[str, Any]) -> dict[str, Any]:
    """Apply one verified Argilla event; returns a small JSON-able summary."""
    event = _dict(event, "the body")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("malformed Argilla event: no 'type'")
    if kind not in RESPONSE_WRITE and kind not in ("response.deleted", "record.deleted"):
        return {"type": kind, "ignored": True}
    data = _dict(event.get("data"), "'data'")
    hook = read_hook(settings) or {}
    ours = hook.get("dataset_id")
    record = data if kind == "record.deleted" else _dict(data.get("record"), "data.record")
    dataset = _dict(record.get("dataset"), "the record's dataset")
    dataset_id = _id(dataset.get("id"), "dataset.id")
    summary: dict[str, Any] = {"type": kind, "dataset": dataset_id}
    if ours and dataset_id != ours:
        summary["skipped"] = [{"reason": f"dataset {dataset.get('name')!r} ({dataset_id}) is not "
                                         "the one labelloop manages"}]
        return summary
    if kind == "record.deleted":
        record_id = _id(record.get("id"), "data.id")
        with open_store(settings) as store:
            rows = store.rows(source=SOURCE, project=dataset_id)
            ids = list(rows.loc[rows["task_id"] == record_id, "annotation_id"]) if not rows.empty else []
            outcomes = store.delete_many(SOURCE, dataset_id, ids, via="webhook") if ids else []
        summary["outcomes"] = dict(Counter(outcomes))
        return summary
    response_id = _id(data.get("id"), "data.id")
    if kind == "response.deleted":
        with open_store(settings) as store:
            first, *parts = annotation_ids(response_id)  # parts: only those stored
            ids = [first] + [a for a in parts if store.get(SOURCE, dataset_id, a) is not None]
            summary["outcomes"] = dict(Counter(
                store.delete_many(SOURCE, dataset_id, ids, via="webhook")))
        return summary
    user = data.get("user") if isinstance(data.get("user"), dict) else None
    try:
        recs = records_from_response(task_from_settings(settings), dataset_id, data, record, user,
                                     via="webhook")
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed Argilla event: response {response_id} has an unexpected "
                         f"shape ({type(exc).__name__})") from None
    with open_store(settings) as store:
        # A draft is no label, unless it replaces an answer the store holds (then not trainable).
        recs = [r for r in recs if not r.extra.get("draft")
                or store.get(SOURCE, dataset_id, r.annotation_id) is not None]
        if not recs:
            summary["outcomes"] = {"draft-ignored": 1}
            return summary
        outcomes = store.upsert_many(recs)
        # An update that drops a part of the answer (a generation response's preference) drops
        # its row; a response that never had it leaves nothing behind to delete.
        # Only a version newer than the stored part drops it: a replayed older one never does.
        given, when = {r.annotation_id for r in recs}, parse_time(recs[0].updated_at)
        held = {a: store.get(SOURCE, dataset_id, a) for a in annotation_ids(response_id)[1:]
                if a not in given}
        dropped = [a for a, row in held.items() if row is not None
                   and row["status"] != DELETED and when > float(row["updated_ts"])]
        if dropped and not any(r.extra.get("draft") for r in recs):
            outcomes += store.delete_many(SOURCE, dataset_id, dropped, via="webhook")
        summary["outcomes"] = dict(Counter(outcomes))
        skipped = [{"response": r.annotation_id, "reason": r.reason} for r in recs
                   if r.status == INVALID]
        if skipped:
            summary["skipped"] = skipped
        threshold = settings.argilla.webhook_trigger_labels
        if threshold > 0:
            # Counted since the last feedback run that consumed labels, or the last run this
            # threshold started, whichever is later (as for Label Studio's webhook).
            mark_key = "argilla_trigger_seq"
            since = max(store.last_feedback_seq(None), int(store.get_meta(mark_key, "0")))
            seq_now = store.current_seq()
            new = store.new_labels_since(since, None, SOURCE)
            summary["new_labels"] = new
            if new >= threshold:
                started = trigger.request_feedback_run(settings, None, f"argilla: {new} new labels")
                summary["feedback_run"] = "started" if started else "already-running"
                if started:
                    store.set_meta(mark_key, seq_now)
    return summary
