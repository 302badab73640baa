"""Issue 11 (hardening): webhooks with hostile shapes, ties in the labels store, the capped
prediction log, and a worker that exits when its parent is killed."""

from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from annotation import webhook
from labelloop import labels_store as ls
from labelloop.labels_store import LabelRecord, LabelsStore
from labelloop.prediction_log import PredictionLog, read_predictions, text_digest
from labelloop.settings import Settings
from tests.helpers import REPO_ROOT
from tests.unit.test_annotation_webhook import CREATED

# ---- webhooks ----------------------------------------------------------------------------------


def test_non_scalar_task_id_is_a_value_error_not_a_type_error(tmp_path):
    """annotation.task as a list was `TypeError: unhashable` (a 500 from /ls/webhook)."""
    payload = copy.deepcopy(CREATED)
    payload["annotation"]["task"] = [1]
    with pytest.raises(ValueError, match="annotation.task must be an integer id"):
        webhook.handle_event(Settings(data_dir=str(tmp_path)), payload)
    payload = copy.deepcopy(CREATED)
    payload["task"]["id"] = {"id": 1}
    with pytest.raises(ValueError, match="task.id"):
        webhook.handle_event(Settings(data_dir=str(tmp_path)), payload)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["id", "task", "data", "text", "result",
                                                       "value", "choices", "type"]), inner,
                                      max_size=3),
                    max_leaves=8)
FIELDS = [("annotation", "id"), ("annotation", "task"), ("annotation", "result"),
          ("annotation", "created_at"), ("annotation", "updated_at"),
          ("annotation", "completed_by"), ("annotation", "prediction"),
          ("annotation", "parent_prediction"), ("annotation", "project"), ("task", "id"),
          ("task", "data"), ("task", "predictions"), ("task", "project"), ("project", "id")]


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=4))
def test_any_payload_shape_is_handled_or_a_value_error(tmp_path_factory, changes):
    """Whatever a field holds, handle_event answers or raises ValueError (the route's 400)."""
    payload = copy.deepcopy(CREATED)
    for (outer, key), value in changes:
        if isinstance(payload.get(outer), dict):
            payload[outer][key] = value
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("hook")))
    try:
        out = webhook.handle_event(settings, payload)
    except ValueError:
        return
    json.dumps(out)  # the answer is JSON-able


# ---- labels store: ties ------------------------------------------------------------------------

def _rec(label, via, **kw):
    return LabelRecord(source="label-studio", project="1", annotation_id="7", text="good day",
                       label=label, updated_at="2026-01-01T00:00:00Z", via=via, **kw)


def test_same_time_versions_end_in_one_state_whatever_the_arrival_order(tmp_path):
    """Two versions with the same updated_at ended in arrival order; now every order of a
    webhook, an export with the prediction shown and a conflicting version gives one row."""
    versions = [_rec("negative", "webhook"),
                _rec("negative", "sync", model_version="3", shown_label="positive",
                     shown_score=0.6),
                _rec("neutral", "webhook", annotator="a@b")]
    finals = set()
    for i, order in enumerate(itertools.permutations(versions)):
        with LabelsStore(tmp_path / f"labels{i}.sqlite") as store:
            for r in order:
                store.upsert(copy.deepcopy(r))
                store.upsert(copy.deepcopy(r))  # replays change nothing
            row = store.get("label-studio", 1, 7)
            finals.add(tuple(row[k] for k in ("label", "annotator", "model_version",
                                              "shown_label", "shown_score", "changed")))
    assert len(finals) == 1, finals


def test_store_without_the_digest_column_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with LabelsStore(path) as store:
        store.upsert(_rec("negative", "webhook"))
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE labels DROP COLUMN content_digest")
    conn.commit()
    conn.close()
    with LabelsStore(path) as store:
        assert store.upsert(_rec("negative", "webhook")) == ls.UNCHANGED
        assert store.get("label-studio", 1, 7)["content_digest"]


# ---- prediction log ----------------------------------------------------------------------------

def test_prediction_log_keeps_a_bounded_prefix_with_length_and_hash(tmp_path):
    """Texts were stored in full (100k rows x 100k characters from anonymous traffic)."""
    log = PredictionLog(tmp_path / "p.sqlite", text_chars=50, flush_interval_s=0.05)
    text = "long " * 10_000
    pred = {"label": "positive", "score": 0.9, "probabilities": {"positive": 0.9}}
    log.record([text, "short"], [pred, pred], "3")
    assert log.flush()
    log.close()
    short, long_ = read_predictions(tmp_path / "p.sqlite")
    assert long_.text == text[:50] and long_.text_chars == len(text)
    assert long_.text_sha256 == text_digest(text)
    assert short.text == "short" and short.text_chars == 5


def test_prediction_log_from_before_the_cap_still_opens(tmp_path):
    path = tmp_path / "p.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT "
                 "NULL, source TEXT NOT NULL, model_version TEXT NOT NULL, text TEXT NOT NULL, "
                 "label TEXT NOT NULL, score REAL NOT NULL, probabilities TEXT NOT NULL)")
    conn.execute("INSERT INTO predictions (ts, source, model_version, text, label, score, "
                 "probabilities) VALUES (1, 'classify', '1', 'old', 'x', 1, '{}')")
    conn.commit()
    conn.close()
    log = PredictionLog(path, flush_interval_s=0.05)
    log.record(["new"], [{"label": "x", "score": 1.0, "probabilities": {}}], "2")
    assert log.flush()
    log.close()
    assert [p.text for p in read_predictions(path)] == ["new", "old"]


# ---- the worker watches its parent -------------------------------------------------------------

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from services.lifecycle import watch_parent
watch_parent(interval_s=0.1)
print("watching", flush=True)
time.sleep(60)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_orphaned_worker_exits(tmp_path):
    """kill -9 of `bentoml serve` left its worker holding the port; a watched child exits."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(REPO_ROOT)],
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    time.sleep(1.0)  # let the child import and start watching
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10  # generous: only detects a worker that never exits
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
            with open(f"/proc/{child_pid}/stat") as f:
                if f.read().split()[2] == "Z":  # exited (a zombie awaiting a reaper)
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.1)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the orphaned child kept running")
