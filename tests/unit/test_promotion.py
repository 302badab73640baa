import math

from labelloop.promotion import decide


def test_first_model_becomes_champion():
    d = decide("macro_f1", "1", 0.5, None, None, 0.01)
    assert d.promote and "first model" in d.reason


def test_challenger_must_beat_by_margin():
    assert decide("macro_f1", "2", 0.80, "1", 0.79, 0.005).promote
    kept = decide("macro_f1", "2", 0.793, "1", 0.79, 0.005)
    assert not kept.promote and "below margin" in kept.reason
    assert not decide("macro_f1", "2", 0.70, "1", 0.79, 0.0).promote


def test_equal_score_with_zero_margin_promotes_only_when_not_worse():
    assert decide("macro_f1", "2", 0.79, "1", 0.79, 0.0).promote
    assert not decide("macro_f1", "2", 0.7899, "1", 0.79, 0.0).promote


def test_invalid_scores():
    assert not decide("macro_f1", "2", math.nan, "1", 0.5, 0.0).promote
    assert decide("macro_f1", "2", 0.5, "1", math.nan, 0.0).promote
    assert not decide("macro_f1", "1", 0.9, "1", 0.5, 0.0).promote


def test_decision_records_both_scores():
    d = decide("accuracy", "3", 0.9, "2", 0.8, 0.01).to_dict()
    assert d["challenger_score"] == 0.9 and d["champion_score"] == 0.8
    assert d["champion_version"] == "2" and d["challenger_version"] == "3"


def test_recorded_score_is_reused_only_for_the_same_test_rows():
    from pipelines.steps.promote import recorded_score

    tags = {"test_digest": "abc", "test_macro_f1": "0.75", "test_accuracy": "0.8"}
    assert recorded_score(tags, "macro_f1", "abc") == 0.75
    assert recorded_score(tags, "macro_f1", "other-split") is None
    assert recorded_score({"test_macro_f1": "0.75"}, "macro_f1", "abc") is None
    assert recorded_score({"test_digest": "abc"}, "macro_f1", "abc") is None
