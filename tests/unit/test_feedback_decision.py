"""The feedback loop's retrain decision and its notion of fresh labels (no servers, no ZenML run)."""

from __future__ import annotations

import pytest

from labelloop import labels_store
from labelloop.labels_store import LabelRecord
from labelloop.settings import FeedbackSettings, Settings
from pipelines.steps.feedback_decide import decide
from pipelines.steps.feedback_evaluate import fresh_labels


def _eval(fresh_acc=None, n_fresh=0, n_new=0, test_acc=0.80, champion=True):
    return {
        "champion": {"version": "1", "labels_seq": 0, "test": {"accuracy": test_acc}}
        if champion else None,
        "fresh_labels": n_fresh,
        "fresh": None if fresh_acc is None else {"accuracy": fresh_acc, "macro_f1": fresh_acc},
        "new_labels_since_last_retrain": n_new,
    }


CFG = FeedbackSettings(min_new_labels=20, min_fresh_score=0.70, max_drop=0.05, min_fresh_labels=3)


def test_keeps_the_champion_when_nothing_says_retrain():
    d = decide(_eval(fresh_acc=0.79, n_fresh=10, n_new=10), CFG)
    assert not d["retrain"] and d["reason"].startswith("keep the champion")
    assert "10 new labels < feedback.min_new_labels 20" in d["reason"]


@pytest.mark.parametrize("kw, needle", [
    ({"fresh_acc": 0.60, "n_fresh": 5}, "below feedback.min_fresh_score"),
    ({"fresh_acc": 0.72, "n_fresh": 5, "test_acc": 0.80}, "feedback.max_drop"),
    ({"n_new": 20}, "20 new human labels since the last retrain"),
    ({"champion": False}, "no champion yet"),
])
def test_each_rule_triggers_a_retrain_and_says_why(kw, needle):
    d = decide(_eval(**kw), CFG)
    assert d["retrain"] and needle in d["reason"]


def test_score_rules_need_enough_fresh_labels():
    d = decide(_eval(fresh_acc=0.0, n_fresh=2), CFG)
    assert not d["retrain"] and "only 2 fresh labels" in d["reason"]


def test_force_retrain_and_metric_choice():
    assert decide(_eval(), CFG.model_copy(update={"force_retrain": True}))["retrain"]
    d = decide(_eval(fresh_acc=0.6, n_fresh=5),
               CFG.model_copy(update={"fresh_metric": "macro_f1"}))
    assert d["metric"] == "macro_f1" and d["retrain"]


def test_fresh_labels_are_those_written_after_the_champion_was_trained(tmp_path):
    settings = Settings(data_dir=str(tmp_path))

    def rec(aid, text, label, t):
        return LabelRecord(source="label_studio", project="1", annotation_id=str(aid), text=text,
                           label=label, updated_at=t)

    with labels_store.open_store(settings) as store:
        store.upsert_many([rec(1, "a", "positive", 1.0), rec(2, "b", "negative", 1.0)])
        seen = store.current_seq()
        store.upsert_many([rec(3, "c", "neutral", 2.0), rec(2, "b", "positive", 3.0)])
        store.delete("label_studio", "1", 3)
    fresh = fresh_labels(settings, seen)
    # "b" was relabelled after the cut: fresh; "c" was deleted; "a" was seen.
    assert fresh[["text", "label"]].values.tolist() == [["b", "positive"]]
    assert len(fresh_labels(settings, 0)) == 2
