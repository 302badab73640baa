"""The labels store: idempotency, ordering, deletes, invalid labels, counters."""

from __future__ import annotations

import sqlite3

import pytest

from labelloop import labels_store as ls
from labelloop.labels_store import LabelRecord, LabelsStore
from labelloop.settings import Settings


def rec(aid, label="positive", text="good day", t="2026-01-01T00:00:00Z", **kw):
    kw.setdefault("via", "test")
    return LabelRecord(source="label-studio", project="1", annotation_id=str(aid), text=text,
                       label=label, updated_at=t, **kw)


@pytest.fixture
def store(tmp_path):
    s = LabelsStore(tmp_path / "labels.sqlite")
    yield s
    s.close()


def test_insert_replay_is_idempotent(store):
    assert store.upsert(rec(1)) == ls.INSERTED
    seq = store.current_seq()
    assert store.upsert(rec(1)) == ls.UNCHANGED
    assert store.upsert(rec(1, via="other-channel")) == ls.UNCHANGED
    assert store.current_seq() == seq
    assert len(store.training_rows()) == 1


def test_update_replaces_and_older_never_overwrites(store):
    store.upsert(rec(1, label="positive", t="2026-01-01T00:00:00Z"))
    assert store.upsert(rec(1, label="negative", t="2026-01-01T00:00:05Z")) == ls.UPDATED
    # a late-arriving older version
    assert store.upsert(rec(1, label="neutral", t="2026-01-01T00:00:02Z")) == ls.STALE
    rows = store.training_rows()
    assert rows["label"].tolist() == ["negative"]


def test_delete_and_tombstone(store):
    store.upsert(rec(1))
    assert store.delete("label-studio", 1, 1) == ls.REMOVED
    assert store.delete("label-studio", 1, 1) == ls.UNCHANGED
    assert store.upsert(rec(1, t="2027-01-01T00:00:00Z")) == ls.GONE
    assert store.training_rows().empty
    # delete before create (events out of order): the create is ignored
    assert store.delete("label-studio", 1, 2) == ls.TOMBSTONED
    assert store.upsert(rec(2)) == ls.GONE
    assert store.summary() == {"active": 0, "invalid": 0, "deleted": 2}


def test_invalid_records_are_kept_but_never_trained_on(store):
    bad = LabelRecord.invalid("bad label: 'meh'", source="label-studio", project="1",
                              annotation_id="3", text="x", updated_at="2026-01-01T00:00:00Z")
    assert store.upsert(bad) == ls.INSERTED
    assert store.training_rows().empty
    assert store.invalid_rows()["reason"].tolist() == ["bad label: 'meh'"]
    # corrected later: becomes a training row
    assert store.upsert(rec(3, text="x", t="2026-01-02T00:00:00Z")) == ls.UPDATED
    assert store.training_rows()["text"].tolist() == ["x"]


def test_active_record_needs_text_and_label():
    with pytest.raises(ValueError):
        LabelRecord(source="s", project="1", annotation_id="1", text="", label="positive")
    with pytest.raises(ValueError):
        LabelRecord(source="s", project="1", annotation_id="1", text="t", label=None)


def test_latest_label_per_text_wins(store):
    store.upsert(rec(1, text="same", label="positive", t="2026-01-01T00:00:00Z"))
    store.upsert(rec(2, text="same", label="negative", t="2026-01-01T00:01:00Z"))
    store.upsert(rec(3, text="other", label="neutral", t="2026-01-01T00:00:30Z"))
    rows = store.training_rows().set_index("text")["label"].to_dict()
    assert rows == {"same": "negative", "other": "neutral"}


def test_changed_flag_and_provenance_merge(store):
    # webhook without the prediction shown, then the export with it: same version, merged
    store.upsert(rec(1, label="negative", via="webhook"))
    assert store.upsert(rec(1, label="negative", via="sync", model_version="7",
                            shown_label="positive", shown_score=0.6)) == ls.UPDATED
    row = store.get("label-studio", 1, 1)
    assert (row["model_version"], row["shown_label"], row["changed"]) == ("7", "positive", 1)
    # and again: nothing new
    assert store.upsert(rec(1, label="negative", via="webhook")) == ls.UNCHANGED


def test_counters_since_last_feedback_run(store):
    store.upsert(rec(1, text="a"))
    store.upsert(rec(2, text="b"))
    assert store.new_labels_since_last_run(1) == 2
    store.mark_feedback_run(1, reason="test")
    assert store.new_labels_since_last_run(1) == 0
    store.upsert(rec(3, text="c"))
    store.upsert(rec(1, text="a", label="neutral", t="2026-02-01T00:00:00Z"))
    assert store.new_labels_since_last_run(1) == 2
    assert store.new_labels_since_last_run(2) == 0


def test_delete_missing_after_full_export(store):
    for i in (1, 2, 3):
        store.upsert(rec(i, text=f"t{i}"))
    assert store.delete_missing("label-studio", 1, [1, 3]) == ["2"]
    assert sorted(store.training_rows()["text"]) == ["t1", "t3"]


def test_failed_transaction_leaves_nothing(store):
    class Boom(LabelRecord):
        pass

    good = rec(1, text="a")
    broken = rec(2, text="b")
    broken.updated_at = "not a time"
    with pytest.raises(ValueError):
        store.upsert_many([good, broken])
    assert store.training_rows().empty
    assert store.current_seq() == 0


def test_module_level_helpers(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    assert ls.training_rows(settings).empty
    with ls.open_store(settings) as s:
        s.upsert(rec(1))
    df = ls.training_rows(settings)
    assert list(df.columns[:2]) == ["text", "label"] and len(df) == 1
    assert ls.new_labels_since_last_run(settings, 1) == 1
    ls.mark_feedback_run(settings, 1)
    assert ls.new_labels_since_last_run(settings, 1) == 0
    # the file is a plain SQLite database others can read
    assert sqlite3.connect(settings.labels_path).execute("select count(*) from labels").fetchone()[0] == 1


def test_concurrent_writers_lose_nothing(tmp_path):
    """The service calls the webhook handler from a thread pool: writers queue, none fail."""
    import threading

    path = tmp_path / "labels.sqlite"
    LabelsStore(path).close()
    errors = []

    def writer(k):
        try:
            with LabelsStore(path) as s:
                for i in range(25):
                    s.upsert(rec(f"{k}-{i}", text=f"text {k} {i}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with LabelsStore(path) as s:
        assert len(s.training_rows()) == 150 and s.current_seq() == 150


def test_process_killed_mid_transaction_leaves_store_intact(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "labels.sqlite"
    with LabelsStore(path) as s:
        s.upsert(rec(1, text="kept"))
    script = f"""
import os
from labelloop.labels_store import LabelsStore, LabelRecord
s = LabelsStore({str(path)!r})
with s.transaction() as conn:
    for i in range(100, 200):
        s._upsert(conn, LabelRecord(source="label-studio", project="1", annotation_id=str(i),
                                    text=f"t{{i}}", label="neutral", updated_at="2026-01-01T00:00:00Z"))
    os._exit(9)  # killed before COMMIT
"""
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == 9
    with LabelsStore(path) as s:
        assert s.training_rows()["text"].tolist() == ["kept"]
        assert s.upsert(rec(2, text="after")) == ls.INSERTED


def test_training_rows_up_to_a_write_number(store):
    store.upsert(rec(1, text="first", label="positive"))
    seq = store.current_seq()
    store.upsert(rec(2, text="second", label="negative"))
    assert list(store.training_rows(max_seq=seq)["text"]) == ["first"]
    assert sorted(store.training_rows()["text"]) == ["first", "second"]
