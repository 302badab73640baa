"""The labels store's generation rows: edits (kind response), preferences, invalid answers,
the migration of older stores, and the content digest over the new columns."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from labelloop import labels_store as ls
from labelloop.generation.answers import preference_record, response_record
from labelloop.labels_store import LabelRecord, LabelsStore
from labelloop.settings import load_settings


def base(aid, t="2026-01-01T00:00:00Z", **kw):
    out = {"source": "label-studio", "project": "7", "annotation_id": str(aid),
           "task_id": str(100 + int(aid)), "annotator": "ann@x", "updated_at": t, "via": "test"}
    out.update(kw)
    return out


@pytest.fixture
def store(tmp_path):
    s = LabelsStore(tmp_path / "labels.sqlite")
    yield s
    s.close()


def gen_settings(tmp_path):
    return load_settings(overrides={"data_dir": str(tmp_path),
                                    "task": {"type": "generation", "name": "chat"}}, environ={})


def test_edit_accepted_and_rewritten_carry_changed_and_edit_distance(store):
    kept = response_record("Hi?", "Hello there.\n", shown="Hello there.", model_version="3",
                           **base(1))
    rewritten = response_record("Bye?", "See you tomorrow!", shown="See you.", model_version="3",
                                **base(2))
    assert kept.kind == "response" and kept.edit_distance == 0.0
    assert store.upsert_many([kept, rewritten]) == [ls.INSERTED, ls.INSERTED]
    rows = store.training_rows(kind="response").set_index("text")
    assert rows.loc["Hi?", "label"] == "Hello there." and rows.loc["Hi?", "changed"] == 0
    assert rows.loc["Hi?", "edit_distance"] == 0.0
    assert rows.loc["Bye?", "changed"] == 1
    assert 0.0 < rows.loc["Bye?", "edit_distance"] < 1.0
    assert rows.loc["Bye?", "edit_distance"] == pytest.approx(
        ls.normalized_edit_distance("See you.", "See you tomorrow!"))


def test_webhook_without_shown_then_sync_with_it_agree_in_any_order(tmp_path):
    """The edit distance is derived once either channel brings the response shown."""
    hook = response_record("Hi?", "Hey.", **base(1))  # a channel that lacks the prediction
    sync = response_record("Hi?", "Hey.", shown="Hello.", model_version="3", **base(1))
    finals = []
    for order in ((hook, sync), (sync, hook)):
        with LabelsStore(tmp_path / f"s{len(finals)}.sqlite") as s:
            for r in order:
                s.upsert(r)
            row = s.get("label-studio", "7", "1")
            finals.append({k: row[k] for k in ("label", "shown_label", "changed",
                                               "edit_distance", "model_version", "kind")})
    assert finals[0] == finals[1]
    assert finals[0]["changed"] == 1 and finals[0]["edit_distance"] > 0


def test_training_rows_of_a_generation_task_are_the_edits_only(tmp_path):
    settings = gen_settings(tmp_path)
    with ls.open_store(settings) as s:
        s.upsert_many([
            response_record("Hi?", "Hello.", shown="Hello.", **base(1)),
            preference_record("Hi?", "Hello.", "Go away.", "a", "3", "3", **base(2)),
            response_record("Why?", "   ", shown="Because.", **base(3)),  # invalid
        ])
    rows = ls.training_rows(settings)
    assert list(rows.columns[:2]) == ["prompt", "response"]
    assert rows["prompt"].tolist() == ["Hi?"] and rows["response"].tolist() == ["Hello."]
    assert "edit_distance" in rows.columns


def test_classification_training_rows_never_include_generation_kinds(tmp_path):
    settings = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    with ls.open_store(settings) as s:
        s.upsert(LabelRecord(text="good", label="positive", **base(1)))
        s.upsert(response_record("Hi?", "Hello.", **base(2)))
    rows = ls.training_rows(settings)
    assert rows["label"].tolist() == ["positive"]


def test_preference_rows_decided_only_latest_per_triple(tmp_path):
    settings = gen_settings(tmp_path)
    with ls.open_store(settings) as s:
        s.upsert_many([
            preference_record("Hi?", "Hello.", "Go away.", "a", "3", "4", **base(1)),
            preference_record("Hi?", "Go away.", "Hello.", "b", "4", "3",  # same pair, same way
                              **base(2, t="2026-01-01T00:01:00Z", annotator="other@x")),
            preference_record("Bye?", "Bye.", "Ciao.", "tie", "3", "3", **base(3)),
            preference_record("Q?", "A1.", "A2.", "both_bad", "3", "3", **base(4)),
            preference_record("Z?", "Same.", " Same. ", "a", **base(5)),  # identical: invalid
            preference_record("Y?", "One.", "Two.", None, **base(6)),  # no choice: invalid
        ])
        summary = s.summary()
        invalid = s.invalid_rows().set_index("annotation_id")
    prefs = ls.preference_rows(settings)
    assert list(prefs.columns[:8]) == ["prompt", "chosen", "rejected", "model_version",
                                       "annotator", "source", "project", "task_id"]
    assert len(prefs) == 1
    row = prefs.iloc[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Hi?", "Hello.", "Go away.")
    assert row["annotator"] == "other@x"  # the latest annotation of that triple
    assert (row["chosen_version"], row["rejected_version"]) == ("3", "4")
    # ties and both-bad are stored active (counted), invalid ones invalid with a reason
    assert summary == {"active": 4, "invalid": 2, "deleted": 0}
    assert "identical" in invalid.loc["5", "reason"] and "no choice" in invalid.loc["6", "reason"]
    assert ls.training_rows(settings).empty


def test_choice_b_swaps_chosen_and_rejected_and_their_versions():
    r = preference_record("Hi?", "A text", "B text", "b", version_a="3", version_b="4", **base(1))
    assert (r.label, r.rejected, r.chosen_version, r.rejected_version) == \
        ("B text", "A text", "4", "3")


@pytest.mark.parametrize("response", ["", "   \n", None, 5])
def test_empty_or_non_text_responses_are_invalid(response):
    r = response_record("Hi?", response, shown="Hello.", **base(1))
    assert r.status == ls.INVALID and "response" in r.reason and r.label is None


def test_active_preference_needs_choice_and_rejected():
    with pytest.raises(ValueError, match="choice"):
        LabelRecord(text="Hi?", label="x", kind="preference", **base(1))
    with pytest.raises(ValueError, match="kind"):
        LabelRecord(text="Hi?", label="x", kind="nonsense", **base(1))


def test_update_replaces_a_preference_and_delete_removes_it(tmp_path):
    settings = gen_settings(tmp_path)
    with ls.open_store(settings) as s:
        s.upsert(preference_record("Hi?", "A.", "B.", "a", **base(1)))
        assert s.upsert(preference_record("Hi?", "A.", "B.", "b",
                                          **base(1, t="2026-01-02T00:00:00Z"))) == ls.UPDATED
    assert ls.preference_rows(settings)["chosen"].tolist() == ["B."]
    with ls.open_store(settings) as s:
        s.delete("label-studio", "7", "1")
    assert ls.preference_rows(settings).empty


def test_same_time_versions_are_ordered_by_a_digest_over_the_new_fields(tmp_path):
    one = preference_record("Hi?", "A.", "B.", "a", **base(1))
    two = preference_record("Hi?", "A.", "B.", "b", **base(1))
    assert ls.content_digest(one) != ls.content_digest(two)
    finals = []
    for i, order in enumerate(((one, two), (two, one))):
        with LabelsStore(tmp_path / f"d{i}.sqlite") as s:
            for r in order:
                s.upsert(r)
            finals.append(s.get("label-studio", "7", "1")["choice"])
    assert finals[0] == finals[1]


def test_classification_digest_is_unchanged_by_the_new_columns():
    r = LabelRecord(text="good", label="positive", **base(1))
    # the digest a store wrote before the generation columns existed (same content)
    import hashlib
    import json
    old = [getattr(r, k) for k in ("task_id", "text", "label", "annotator", "created_at",
                                   "model_version", "shown_label", "shown_score", "changed",
                                   "status", "reason")]
    assert ls.content_digest(r) == hashlib.sha256(json.dumps(old, default=str).encode()).hexdigest()


def test_migration_adds_the_columns_to_an_older_store(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
    CREATE TABLE labels (source TEXT NOT NULL, project TEXT NOT NULL, annotation_id TEXT NOT NULL,
      task_id TEXT, text TEXT, label TEXT, annotator TEXT, created_at TEXT, updated_at TEXT,
      updated_ts REAL NOT NULL DEFAULT 0, model_version TEXT, shown_label TEXT, shown_score REAL,
      changed INTEGER, status TEXT NOT NULL, reason TEXT, via TEXT, seq INTEGER NOT NULL,
      first_seq INTEGER NOT NULL, stored_at REAL NOT NULL,
      PRIMARY KEY (source, project, annotation_id));
    INSERT INTO labels VALUES ('label-studio','1','9','5','good','positive',NULL,NULL,
      '2026-01-01T00:00:00Z',1767225600,NULL,NULL,NULL,NULL,'active',NULL,'sync',1,1,0);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('seq','1');
    """)
    conn.close()
    with LabelsStore(path) as s:
        rows = s.training_rows(kind="label")
        assert rows["label"].tolist() == ["positive"]
        assert s.get("label-studio", "1", "9")["kind"] == "label"
        s.upsert(response_record("Hi?", "Hello.", shown="Hey.", **base(2)))
        assert s.training_rows(kind="response")["label"].tolist() == ["Hello."]
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(labels)")}
    assert {"kind", "rejected", "choice", "edit_distance", "chosen_version",
            "rejected_version", "content_digest", "rating"} <= cols


def test_a_rating_is_stored_returned_and_only_on_responses(tmp_path):
    settings = gen_settings(tmp_path)
    with ls.open_store(settings) as s:
        assert s.upsert(response_record("Hi?", "Hello.", shown="Hey.", rating=5,
                                        **base(1))) == ls.INSERTED
        s.upsert(response_record("Bye?", "Bye.", shown="Bye.", **base(2)))
        # the same answer with another rating, later: an update of the answer
        assert s.upsert(response_record("Hi?", "Hello.", shown="Hey.", rating=3,
                                        **base(1, t="2026-01-02T00:00:00Z"))) == ls.UPDATED
    rows = ls.training_rows(settings).set_index("prompt")
    assert rows.loc["Hi?", "rating"] == 3 and pd.isna(rows.loc["Bye?", "rating"])  # not rated
    with pytest.raises(ValueError, match="rating"):
        LabelRecord(text="Hi?", label="A.", rejected="B.", choice="a", kind="preference",
                    rating=3, **base(3))
    with pytest.raises(ValueError, match="rating"):
        LabelRecord(text="Hi?", label="A.", kind="response", rating=0, **base(3))


def test_an_unrated_response_keeps_the_digest_it_had_before_ratings():
    r = response_record("Hi?", "Hello.", shown="Hey.", **base(1))
    import hashlib
    import json
    old = [getattr(r, k) for k in ("task_id", "text", "label", "annotator", "created_at",
                                   "model_version", "shown_label", "shown_score", "changed",
                                   "status", "reason", "kind", "rejected", "choice",
                                   "edit_distance", "chosen_version", "rejected_version")]
    assert ls.content_digest(r) == hashlib.sha256(json.dumps(old, default=str).encode()).hexdigest()
    rated = response_record("Hi?", "Hello.", shown="Hey.", rating=4, **base(1))
    assert ls.content_digest(rated) != ls.content_digest(r)


def test_a_store_from_before_ratings_gains_the_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "before-ratings.sqlite"
    with LabelsStore(path) as s:  # today's schema less the rating column: the previous store
        s.upsert(response_record("Hi?", "Hello.", shown="Hey.", **base(1)))
        s._conn.execute("ALTER TABLE labels DROP COLUMN rating")
    assert "rating" not in {r[1] for r in sqlite3.connect(path).execute(
        "PRAGMA table_info(labels)")}
    with LabelsStore(path) as s:
        assert s.get("label-studio", "7", "1")["rating"] is None
        # the same unrated answer again changes nothing; a rated one is a new version
        assert s.upsert(response_record("Hi?", "Hello.", shown="Hey.", **base(1))) == ls.UNCHANGED
        assert s.upsert(response_record("Hi?", "Hello.", shown="Hey.", rating=4,
                                        **base(1, t="2026-01-03T00:00:00Z"))) == ls.UPDATED
        assert s.get("label-studio", "7", "1")["rating"] == 4
