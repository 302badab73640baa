"""Argilla responses -> labels store, without a server: the conversion, the webhook's signature
check and event handling (ordering, replays, drafts, deletions, the label threshold), and the
tool switch. The real server is tests/integration/test_argilla.py."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook

from annotation import argilla_webhook as W
from annotation.argilla_records import record_from_response
from labelloop import trigger
from labelloop.labels_store import open_store
from labelloop.settings import ConfigError, Settings, load_settings
from labelloop.tasks import task_from_settings

DATASET = "0b6f3c1e-0000-4000-8000-000000000001"
SECRET = "c2VjcmV0LWZvci10ZXN0cy0xMjM0NTY3ODkwMTIzNDU2Nzg5MA=="


@pytest.fixture()
def settings(tmp_path):
    s = Settings(data_dir=str(tmp_path))
    W.write_hook(s, {"id": "h1", "url": "u", "secret": SECRET, "dataset_id": DATASET})
    return s


def event(kind="response.created", response_id="r-1", label="negative", status="submitted",
          updated="2026-12-02T05:00:00.000001", record_id="rec-1", dataset=DATASET,
          text="the train was late again"):
    return {"type": kind, "version": 1, "timestamp": "2026-12-02T05:00:00.5Z", "data": {
        "id": response_id, "values": {"label": {"value": label}} if label is not None else {},
        "status": status, "inserted_at": "2026-12-02T04:59:00.000001", "updated_at": updated,
        "user": {"id": "u-1", "username": "ann"},
        "record": {"id": record_id, "external_id": "t-x", "fields": {"text": text},
                   "metadata": {"uncertainty": 0.4, "model_version": "3",
                                "suggested_label": "positive", "suggested_score": 0.6},
                   "dataset": {"id": dataset, "name": "ds"}}}}


def rows(s):
    with open_store(s) as store:
        return store.rows(source="argilla")


def test_conversion_keeps_provenance_and_says_why_not_trainable():
    task = task_from_settings(Settings())
    data = event()["data"]
    rec = record_from_response(task, DATASET, data, data["record"], data["user"], via="sync")
    assert (rec.label, rec.annotator, rec.model_version, rec.shown_label, rec.shown_score,
            rec.task_id, rec.annotation_id, rec.status) == (
        "negative", "ann", "3", "positive", 0.6, "rec-1", "r-1", "active")
    for status, reason in (("discarded", "discarded by the annotator"),
                           ("draft", "draft (not submitted)")):
        d = {**data, "status": status}
        assert record_from_response(task, DATASET, d, d["record"], None, "sync").reason == reason
    bad = {**data, "values": {"label": {"value": "sarcastic"}}}
    assert record_from_response(task, DATASET, bad, bad["record"], None, "sync").reason.startswith(
        "bad label")
    empty = {**data, "values": {}}
    assert record_from_response(task, DATASET, empty, empty["record"], None,
                                "sync").reason == "empty response (no label given)"


def test_updates_replace_late_and_replayed_deliveries_change_nothing(settings):
    W.handle_event(settings, event(updated="2026-12-02T05:00:02"))
    W.handle_event(settings, event(label="neutral", updated="2026-12-02T05:00:03"))
    with open_store(settings) as store:
        seq = store.current_seq()
    # The older version arriving late, and the newest one again: no write.
    assert W.handle_event(settings, event(updated="2026-12-02T05:00:02"))["outcomes"] == {"stale": 1}
    assert W.handle_event(settings, event(label="neutral", updated="2026-12-02T05:00:03"))[
        "outcomes"] == {"unchanged": 1}
    with open_store(settings) as store:
        assert store.current_seq() == seq
    (row,) = rows(settings).itertuples()
    assert (row.label, row.status, row.changed) == ("neutral", "active", 1)


def test_drafts_deletions_and_foreign_datasets(settings):
    assert W.handle_event(settings, event(status="draft"))["outcomes"] == {"draft-ignored": 1}
    assert rows(settings).empty
    W.handle_event(settings, event(updated="2026-12-02T05:00:01"))
    # Back to draft: stops training (kept as not trainable), not removed.
    W.handle_event(settings, event(status="draft", updated="2026-12-02T05:00:02"))
    assert rows(settings).iloc[0]["status"] == "invalid"
    W.handle_event(settings, event(kind="response.deleted", updated="2026-12-02T05:00:03"))
    # A create replayed after the delete does not resurrect it.
    W.handle_event(settings, event(updated="2026-12-02T05:00:04"))
    assert list(rows(settings)["status"]) == ["deleted"]
    W.handle_event(settings, event(response_id="r-2", record_id="rec-2"))
    deleted = W.handle_event(settings, {"type": "record.deleted", "data": {
        "id": "rec-2", "dataset": {"id": DATASET}}})
    assert deleted["outcomes"] == {"removed": 1}
    out = W.handle_event(settings, event(response_id="r-3", dataset=str(uuid.uuid4())))
    assert out["skipped"] and len(rows(settings)) == 2
    assert W.handle_event(settings, {"type": "record.completed", "data": {}})["ignored"]


@pytest.mark.parametrize("bad", [[], {"type": "response.created"},
                                 {"type": "response.created", "data": {"id": "x"}},
                                 {"type": "response.created", "data": {"id": 5, "record": {
                                     "dataset": {"id": DATASET}}}}])
def test_malformed_events_are_value_errors(settings, bad):
    with pytest.raises(ValueError):
        W.handle_event(settings, bad)
    assert rows(settings).empty


def test_label_threshold_starts_one_feedback_run(settings, monkeypatch):
    started = []
    monkeypatch.setattr(trigger, "request_feedback_run",
                        lambda s, project, reason: started.append((project, reason)) or True)
    settings.argilla.webhook_trigger_labels = 2
    W.handle_event(settings, event(response_id="a", text="one"))
    assert not started
    out = W.handle_event(settings, event(response_id="b", text="two"))
    assert out["feedback_run"] == "started" and started == [(None, "argilla: 2 new labels")]
    W.handle_event(settings, event(response_id="b", text="two"))  # a replay counts nothing
    W.handle_event(settings, event(response_id="c", text="three"))
    assert len(started) == 1


def _signed(body: str, secret=SECRET, when=None, msg_id="msg_1"):
    when = when or datetime.now(timezone.utc)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, body)}


def test_signature_check(settings, tmp_path):
    body = json.dumps(event())
    assert W.verify(settings, body.encode(), _signed(body))["type"] == "response.created"
    with pytest.raises(W.WebhookAuthError) as e:
        W.verify(settings, body.encode(), {})
    assert e.value.status == 401 and not e.value.wrong
    other = "b3RoZXItc2VjcmV0LTEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNA=="
    for headers in (_signed(body, secret=other),
                    _signed(body, when=datetime.now(timezone.utc) - timedelta(minutes=6)),
                    _signed(body + " ")):
        with pytest.raises(W.WebhookAuthError) as e:
            W.verify(settings, body.encode(), headers)
        assert e.value.status == 403
    with pytest.raises(ValueError):
        W.verify(settings, b"[1]", _signed("[1]"))
    with pytest.raises(W.WebhookAuthError) as e:  # no webhook set up here
        W.verify(Settings(data_dir=str(tmp_path / "none")), body.encode(), _signed(body))
    assert e.value.status == 403


def test_tools_setting(tmp_path):
    from annotation.tools import enabled

    assert [t.name for t in enabled(Settings())] == ["label-studio"]
    both = Settings(annotation={"tools": ["argilla", "label-studio"]})
    assert [t.name for t in enabled(both)] == ["argilla", "label-studio"]
    with pytest.raises(ConfigError):
        load_settings(overrides={"annotation": {"tools": ["prodigy"]}}, environ={})
    with pytest.raises(ConfigError):
        load_settings(overrides={"annotation": {"tools": ["argilla", "argilla"]}}, environ={})

