"""The decision rule tuned for macro-F1 (labelloop/decision.py): the offset search, the bundle
record, and the settings that need validation rows for it."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop import decision
from labelloop.settings import ConfigError, load_settings


def skewed(n: int = 900, seed: int = 0, shift: float = 1.5):
    """Logits of a model that separates three classes well but under-scores the rarest (2) by
    `shift`: plain argmax gives it few predictions, so its recall and macro-F1 suffer."""
    rng = np.random.default_rng(seed)
    refs = rng.choice(3, size=n, p=[0.45, 0.4, 0.15])
    logits = rng.normal(0, 1.0, size=(n, 3))
    logits[np.arange(n), refs] += 2.5
    logits[:, 2] -= shift
    return logits, refs


def test_the_fit_improves_macro_f1_of_skewed_logits_by_raising_the_rare_class():
    logits, refs = skewed()
    offsets, scores = decision.fit_offsets(logits, refs)
    assert scores["before"] == pytest.approx(decision.macro_f1_of(logits, refs))
    assert scores["after"] == pytest.approx(decision.macro_f1_of(logits, refs, offsets))
    assert scores["after"] > scores["before"] + 0.03
    # the rare, under-scored class gets the largest offset
    assert offsets.argmax() == 2 and offsets[2] - offsets[:2].mean() > 0.3
    # as good as a brute-force search over two offsets (the third fixed: only differences count)
    grid = np.arange(-1.0, 2.01, 0.1)
    brute = max(decision.macro_f1_of(logits, refs, np.array([0.0, a, b]))
                for a in grid for b in grid)
    assert scores["after"] >= brute - 0.002
    assert offsets.mean() == pytest.approx(0.0, abs=1e-6)
    # ...and it holds on fresh rows of the same model, not only on the rows it was fitted on
    fresh, fresh_refs = skewed(seed=1)
    assert decision.macro_f1_of(fresh, fresh_refs, offsets) > \
        decision.macro_f1_of(fresh, fresh_refs) + 0.03


def test_zero_offsets_when_the_argmax_is_already_optimal():
    refs = np.array([0, 1, 2] * 20)
    logits = np.eye(3)[refs] * 5.0 - 1.0  # every row right by a wide margin
    offsets, scores = decision.fit_offsets(logits, refs)
    assert not offsets.any() and scores == {"before": 1.0, "after": 1.0}
    # one class only or no rows: nothing to fit
    assert not decision.fit_offsets(np.zeros((0, 3)), [])[0].any()


def test_the_fit_is_deterministic_and_order_free():
    logits, refs = skewed(n=600, seed=3)
    first, _ = decision.fit_offsets(logits, refs)
    again, _ = decision.fit_offsets(logits.copy(), refs.copy())
    perm = np.random.default_rng(9).permutation(len(refs))
    shuffled, _ = decision.fit_offsets(logits[perm], refs[perm])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, shuffled)


def test_offsets_from_meta_in_label_order_and_none_without_a_record():
    labels = ["negative", "neutral", "positive"]
    meta = {"decision_bias": {"rule": "macro_f1",
                              "offsets": {"positive": 0.5, "negative": -0.25}}}
    np.testing.assert_allclose(decision.offsets_from_meta(meta, labels), [-0.25, 0.0, 0.5])
    assert decision.offsets_from_meta({}, labels) is None
    assert decision.offsets_from_meta(
        {"decision_bias": {"offsets": dict.fromkeys(labels, 0.0)}}, labels) is None
    assert "positive +0.50" in decision.describe({
        **meta["decision_bias"], "validation_rows": 10, "validation_macro_f1_before": 0.5,
        "validation_macro_f1": 0.6})


def test_decision_bias_needs_validation_rows_at_config_time():
    with pytest.raises(ConfigError, match="decision_bias macro_f1 fits its offsets on "
                                          "validation rows.*validation_fraction"):
        load_settings(None, environ={}, overrides={"training": {"decision_bias": "macro_f1"}})
    ok = load_settings(None, environ={}, overrides={"training": {"decision_bias": "macro_f1"},
                                                    "dataset": {"validation_fraction": 0.1}})
    assert ok.training.decision_bias == "macro_f1"
    ok = load_settings(None, environ={}, overrides={"training": {"decision_bias": "macro_f1"},
                                                    "dataset": {"validation": "v.csv"}})
    assert ok.dataset.validation is not None
    assert load_settings(None, environ={}, overrides={
        "training": {"decision_bias": False}}).training.decision_bias == "off"  # YAML's bare off
    with pytest.raises(ConfigError, match="decision_bias"):
        load_settings(None, environ={}, overrides={"training": {"decision_bias": "accuracy"}})
