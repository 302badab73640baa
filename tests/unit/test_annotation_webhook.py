"""annotation.webhook.handle_event on payloads shaped as Label Studio 1.23 sends them."""

from __future__ import annotations

import copy
import json
import sys
import time

import pytest

from annotation import webhook
from labelloop import labels_store, trigger
from labelloop.settings import Settings

# Trimmed from payloads captured from a real Label Studio 1.23 (project webhook, send_payload).
PRED = {"id": 1, "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                             "value": {"choices": ["positive"]}}],
        "model_version": "3", "score": 0.6, "task": 1, "project": 1}
CREATED = {
    "action": "ANNOTATION_CREATED",
    "annotation": {
        "id": 1, "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                             "value": {"choices": ["negative"]}, "origin": "prediction-changed"}],
        "was_cancelled": False, "ground_truth": False,
        "created_at": "2026-11-23T13:47:53.844998Z", "updated_at": "2026-11-23T13:47:53.845016Z",
        "prediction": PRED, "task": 1, "project": 1, "completed_by": 1, "updated_by": 1,
        "parent_prediction": 1,
    },
    "project": {"id": 1, "task_number": 1, "finished_task_number": 1},
    "task": {"id": 1, "data": {"text": "hello"}, "meta": {}, "project": 1, "is_labeled": True},
}


def updated(label, at):
    p = copy.deepcopy(CREATED)
    p["action"] = "ANNOTATION_UPDATED"
    p["annotation"]["result"] = [{"from_name": "label", "to_name": "text", "type": "choices",
                                  "value": {"choices": [label]}}]
    p["annotation"]["updated_at"] = at
    return p


DELETED = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}],
           "project": {"id": 1, "task_number": 1, "finished_task_number": 0}}


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=str(tmp_path))


def rows(settings):
    return labels_store.training_rows(settings)


def test_created_records_provenance_and_replay_is_idempotent(settings):
    out = webhook.handle_event(settings, copy.deepcopy(CREATED))
    assert out["outcomes"] == {"inserted": 1}
    df = rows(settings)
    assert df[["text", "label", "model_version", "shown_label", "changed"]].values.tolist() == [
        ["hello", "negative", "3", "positive", 1]]
    assert df.loc[0, "annotator"] == "1" and df.loc[0, "task_id"] == "1"
    assert webhook.handle_event(settings, copy.deepcopy(CREATED))["outcomes"] == {"unchanged": 1}


def test_update_then_late_old_event_then_delete(settings):
    webhook.handle_event(settings, CREATED)
    assert webhook.handle_event(settings, updated("neutral", "2026-11-23T13:47:54.969986Z"))[
        "outcomes"] == {"updated": 1}
    # a duplicate of the ORIGINAL create arriving late changes nothing
    assert webhook.handle_event(settings, CREATED)["outcomes"] == {"stale": 1}
    assert rows(settings)["label"].tolist() == ["neutral"]
    assert webhook.handle_event(settings, DELETED)["outcomes"] == {"removed": 1}
    assert webhook.handle_event(settings, DELETED)["outcomes"] == {"unchanged": 1}
    assert rows(settings).empty
    # an update replayed after the delete never resurrects it
    webhook.handle_event(settings, updated("positive", "2026-11-23T14:00:00Z"))
    assert rows(settings).empty


def test_bad_label_and_empty_result_are_skipped_and_reported(settings):
    bad = updated("meh", "2026-11-23T13:47:53.845016Z")
    bad["action"] = "ANNOTATION_CREATED"
    out = webhook.handle_event(settings, bad)
    assert "bad label" in out["skipped"][0]["reason"]
    empty = copy.deepcopy(CREATED)
    empty["annotation"]["id"] = 2
    empty["annotation"]["result"] = []
    out = webhook.handle_event(settings, empty)
    assert "empty result" in out["skipped"][0]["reason"]
    assert rows(settings).empty


def test_task_of_another_project_is_skipped(settings):
    p = copy.deepcopy(CREATED)
    p["task"]["project"] = 99
    out = webhook.handle_event(settings, p)
    assert "does not belong" in out["skipped"][0]["reason"]
    assert rows(settings).empty


@pytest.mark.parametrize("payload", [
    None, [], {}, {"action": 3}, {"action": "ANNOTATION_CREATED"},
    {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": "x"},
    {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": "1"}},
    {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": None}]},
    {"action": "START_TRAINING", "project": {}},
])
def test_malformed_payloads_raise_value_error(settings, payload):
    with pytest.raises(ValueError):
        webhook.handle_event(settings, payload)


def test_other_actions_are_ignored(settings):
    assert webhook.handle_event(settings, {"action": "TASKS_CREATED", "tasks": []})["ignored"]


def test_start_training_requests_one_run(settings, monkeypatch):
    calls = []
    monkeypatch.setattr(trigger, "request_feedback_run",
                        lambda s, p, r: calls.append((p, r)) or True)
    out = webhook.handle_event(settings, {"action": "START_TRAINING", "project": {"id": 4}})
    assert out["feedback_run"] == "started" and calls == [(4, "label-studio: start training")]


def test_threshold_of_new_labels_triggers(tmp_path, monkeypatch):
    settings = Settings(data_dir=str(tmp_path), feedback={"webhook_trigger_labels": 2})
    calls = []
    monkeypatch.setattr(trigger, "request_feedback_run",
                        lambda s, p, r: calls.append((p, r)) or True)
    webhook.handle_event(settings, CREATED)
    assert calls == []
    second = copy.deepcopy(CREATED)
    second["annotation"]["id"] = 2
    second["task"]["data"]["text"] = "another"
    out = webhook.handle_event(settings, second)
    assert out["feedback_run"] == "started" and calls == [(1, "webhook: 2 new labels")]
    # the run kept the champion (no mark_feedback_run): the next label does not start another
    third = copy.deepcopy(CREATED)
    third["annotation"]["id"] = 3
    third["task"]["data"]["text"] = "a third"
    out = webhook.handle_event(settings, third)
    assert "feedback_run" not in out and out["new_labels"] == 1 and len(calls) == 1
    fourth = copy.deepcopy(third)
    fourth["annotation"]["id"] = 4
    fourth["task"]["data"]["text"] = "a fourth"
    assert webhook.handle_event(settings, fourth)["feedback_run"] == "started"
    assert len(calls) == 2


def test_trigger_runs_once_per_project_and_lock_is_inherited(settings):
    script = ("import time, os; from labelloop import trigger; from labelloop.settings import "
              "load_settings; s = load_settings(); "
              "ctx = trigger.feedback_lock(s, 5); ctx.__enter__(); "
              "open(os.path.join(s.data_dir, 'child-ran'), 'w').write('ok'); time.sleep(3)")
    cmd = [sys.executable, "-c", script]
    assert trigger.request_feedback_run(settings, 5, "test", command=cmd) is True
    assert trigger.request_feedback_run(settings, 5, "test", command=cmd) is False
    assert trigger.is_running(settings, 5)
    assert not trigger.is_running(settings, 6)
    with pytest.raises(trigger.FeedbackRunning):
        with trigger.feedback_lock(settings, 5):
            pass
    deadline = time.time() + 30
    while trigger.is_running(settings, 5) and time.time() < deadline:
        time.sleep(0.2)
    assert (settings.data_path / "child-ran").read_text() == "ok"
    with trigger.feedback_lock(settings, 5):
        assert trigger.is_running(settings, 5)
    assert not trigger.is_running(settings, 5)


def test_bulk_annotations_created(settings):
    bulk = {"action": "ANNOTATIONS_CREATED", "project": {"id": 1},
            "annotation": [], "task": []}
    for i, (text, label) in enumerate([("a", "positive"), ("b", "negative")], start=10):
        a = copy.deepcopy(CREATED["annotation"])
        a.update(id=i, task=100 + i, result=[{"from_name": "label", "to_name": "text",
                                              "type": "choices", "value": {"choices": [label]}}])
        bulk["annotation"].append(a)
        bulk["task"].append({"id": 100 + i, "data": {"text": text}, "project": 1})
    out = webhook.handle_event(settings, bulk)
    assert out["outcomes"] == {"inserted": 2}
    assert dict(zip(rows(settings)["text"], rows(settings)["label"])) == {"a": "positive",
                                                                         "b": "negative"}


def test_a_finished_run_is_reaped_and_its_secret_snapshot_removed(settings):
    """Regression: each "Start training" child stayed a zombie until the service exited, and
    the 0600 settings snapshot holding the secrets stayed on disk after the run."""
    import os

    snapshots = lambda: sorted(settings.data_path.joinpath("feedback").glob("settings-*.yaml"))
    cmd = [sys.executable, "-c", "import time; time.sleep(0.5)"]
    assert trigger.request_feedback_run(settings, 7, "test", command=cmd)
    [snapshot] = snapshots()
    assert (snapshot.stat().st_mode & 0o777) == 0o600
    pid = json.loads(trigger.lock_path(settings, 7).read_text())["pid"]
    deadline = time.time() + 30
    while time.time() < deadline and (snapshots() or os.path.exists(f"/proc/{pid}")):
        time.sleep(0.1)
    assert snapshots() == []
    assert not os.path.exists(f"/proc/{pid}"), "the finished child is still a zombie"


def test_start_training_answer_says_what_happens(settings, monkeypatch):
    from labelloop import loop_status

    monkeypatch.setattr(trigger, "request_feedback_run", lambda s, p, r: True)
    out = webhook.handle_event(settings, {"action": "START_TRAINING", "project": {"id": 4}})
    assert "Training run started" in out["message"] and out["status_page"].endswith("/status")
    turn = loop_status.start_turn(settings, 4, "label-studio: start training")
    loop_status.set_stage(settings, turn, "train", 0.5)
    monkeypatch.setattr(trigger, "request_feedback_run", lambda s, p, r: False)
    monkeypatch.setattr(trigger, "is_running", lambda s, p: True)
    out = webhook.handle_event(settings, {"action": "START_TRAINING", "project": {"id": 4}})
    assert out["feedback_run"] == "already-running"
    assert "no second one was started" in out["message"] and "stage train (50%)" in out["message"]
