"""The training recipe on small and imbalanced data: class weights, the size-adaptive schedule,
the TF-IDF baseline and the promotion setting that requires beating it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from labelloop import baseline, promotion, training
from labelloop.settings import ConfigError, Settings, TrainingSettings, load_settings
from labelloop.tasks import ClassificationTask

TASK = ClassificationTask("sentiment", ("negative", "neutral", "positive"))


# -- class weights -----------------------------------------------------------------------------
def test_auto_weights_make_every_label_weigh_the_same():
    labels = ["negative"] * 6 + ["neutral"] * 3 + ["positive"] * 1
    w = training.class_weights("auto", labels, TASK)
    assert w == pytest.approx({"negative": 10 / 18, "neutral": 10 / 9, "positive": 10 / 3})
    # each label's rows now carry the same total weight, and the mean row weight stays 1
    assert 6 * w["negative"] == pytest.approx(3 * w["neutral"]) == pytest.approx(w["positive"])
    assert (6 * w["negative"] + 3 * w["neutral"] + w["positive"]) / 10 == pytest.approx(1.0)


def test_auto_weights_give_an_absent_label_one_and_off_gives_none():
    assert training.class_weights("auto", ["negative", "neutral"], TASK)["positive"] == 1.0
    assert training.class_weights("off", ["negative"], TASK) is None


def test_given_weights_default_to_one_and_unknown_labels_are_refused():
    assert training.class_weights({"positive": 3}, [], TASK) == {
        "negative": 1.0, "neutral": 1.0, "positive": 3.0}
    with pytest.raises(ValueError, match=r"\['happy'\]"):
        training.class_weights({"happy": 2}, [], TASK)


def test_class_weight_settings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  class_weights: off\n")  # bare YAML off reads as false
    assert load_settings(cfg, environ={}).training.class_weights == "off"
    cfg.write_text(yaml.safe_dump({"training": {"class_weights": {"positive": 2.5}}}))
    assert load_settings(cfg, environ={}).training.class_weights == {"positive": 2.5}
    for bad, says in [({"happy": 2}, "names label"), ({"positive": 0}, "positive numbers"),
                      ("sometimes", "class_weights")]:
        cfg.write_text(yaml.safe_dump({"training": {"class_weights": bad}}))
        with pytest.raises(ConfigError, match=says):
            load_settings(cfg, environ={})


# -- the size-adaptive schedule ----------------------------------------------------------------
def test_small_data_gets_enough_steps_in_smaller_batches():
    cfg = TrainingSettings()
    small = training.plan(cfg, 400)
    assert (small.batch_size, small.steps) == (16, 200)  # 8 passes, not 4 x 7 = 28 steps
    full = training.plan(cfg, 29_863)
    assert full.batch_size == 64 and full.steps == math.ceil(29_863 / 64) * 4
    mid = training.plan(cfg, 5_000)  # 4 passes at 64 already give 316 steps
    assert (mid.batch_size, mid.steps) == (64, 316)


def test_max_steps_wins_and_min_steps_zero_is_plain_epochs():
    assert training.plan(TrainingSettings(max_steps=7), 400).steps == 7
    old = training.plan(TrainingSettings(min_steps=0), 400)
    assert (old.batch_size, old.steps) == (64, 28)
    assert training.plan(TrainingSettings(min_steps=200), 40).batch_size == 16  # the floor


def test_auto_method_and_rate_follow_the_data_size_and_explicit_values_win():
    cfg = TrainingSettings()
    assert cfg.method == "auto" and cfg.learning_rate == "auto"
    small = training.resolve(cfg, 400)
    assert (small.method, small.learning_rate) == ("full", 1e-4)
    large = training.resolve(cfg, 29_863)
    assert (large.method, large.learning_rate) == ("lora", 5e-4)
    given = training.resolve(TrainingSettings(method="lora", learning_rate=1e-3), 400)
    assert (given.method, given.learning_rate) == ("lora", 1e-3)
    assert training.resolve(TrainingSettings(method="full"), 29_863).learning_rate == 1e-4


def positive_share(result, task, texts, where) -> float:
    """The share of `texts` the trained model (a fine_tune result) predicts `positive`."""
    from labelloop.modeling import Classifier, save_bundle

    bundle = save_bundle(result.model, result.tokenizer, where,
                         {"task": task.to_dict(), "max_length": 16, "base_model": "tiny"})
    return float(np.mean([p.label == "positive"
                          for p in Classifier(bundle, device="cpu").predict(texts)]))


def test_class_weights_move_what_the_model_predicts(tiny_base, one_thread, tmp_path):
    """Same rows, same seed: a heavy weight on the rare label makes the model predict it."""
    task = ClassificationTask("s", ("negative", "positive"))
    texts = [f"ordinary text number {i}" for i in range(60)]
    train = pd.DataFrame({"text": texts, "label": ["negative"] * 54 + ["positive"] * 6})
    shares = {}
    for weights in ("off", {"positive": 30.0}):
        cfg = TrainingSettings(method="full", learning_rate=3e-3, max_steps=30, batch_size=16,
                               device="cpu", class_weights=weights)
        result = training.fine_tune(train, task, Settings().model.model_copy(
            update={"base": tiny_base, "max_length": 16}), cfg, progress=False)
        assert result.settings.method == "full" and result.batch_size == 16
        shares[str(weights)] = positive_share(result, task, texts, tmp_path / f"b{len(shares)}")
    assert shares["off"] < 0.5 < shares[str({"positive": 30.0})]


def test_row_weights_move_what_the_model_predicts_and_ones_change_nothing(tiny_base, one_thread,
                                                                         tmp_path):
    """A `weight` column (dataset.weight_column) in fine_tune: heavy rare-label rows make the
    model predict that label, as the class weight above does; weights of 1 train exactly as
    no weights."""
    task = ClassificationTask("s", ("negative", "positive"))
    texts = [f"ordinary text number {i}" for i in range(60)]
    train = pd.DataFrame({"text": texts, "label": ["negative"] * 54 + ["positive"] * 6})
    cfg = TrainingSettings(method="full", learning_rate=3e-3, max_steps=30, batch_size=16,
                           device="cpu")
    model_cfg = Settings().model.model_copy(update={"base": tiny_base, "max_length": 16})
    results = {name: training.fine_tune(rows, task, model_cfg, cfg, progress=False)
               for name, rows in [("none", train), ("ones", train.assign(weight=1.0)),
                                  ("heavy", train.assign(weight=[1.0] * 54 + [30.0] * 6))]}
    assert results["ones"].final_loss == pytest.approx(results["none"].final_loss, rel=1e-5)
    shares = {name: positive_share(results[name], task, texts, tmp_path / name)
              for name in ("none", "heavy")}
    assert shares["none"] < 0.5 < shares["heavy"]
    with pytest.raises(ValueError, match="row weights"):
        training.fine_tune(train.assign(weight=0.0), task, model_cfg, cfg, progress=False)


def test_soft_targets_are_what_the_loss_fits(tiny_base, one_thread, tmp_path):
    """data.SOFT_TARGETS (a teacher's probabilities, for distillation): one-hot targets of the
    labels train exactly as the labels do; targets that say `positive` on rows labelled
    `negative` make the model predict positive; bad targets are one error."""
    from labelloop.data import SOFT_TARGETS
    task = ClassificationTask("s", ("negative", "positive"))
    texts = [f"ordinary text number {i}" for i in range(60)]
    train = pd.DataFrame({"text": texts, "label": ["negative"] * 60})
    cfg = TrainingSettings(method="full", learning_rate=3e-3, max_steps=30, batch_size=16,
                           device="cpu")
    model_cfg = Settings().model.model_copy(update={"base": tiny_base, "max_length": 16})
    as_labels = train.assign(**{SOFT_TARGETS: [np.array([1.0, 0.0])] * 60})
    flipped = train.assign(**{SOFT_TARGETS: [np.array([0.1, 0.9])] * 60})
    results = {name: training.fine_tune(rows, task, model_cfg, cfg, progress=False)
               for name, rows in [("labels", train), ("one-hot", as_labels), ("flipped", flipped)]}
    assert results["one-hot"].final_loss == pytest.approx(results["labels"].final_loss, rel=1e-5)
    shares = {name: positive_share(results[name], task, texts, tmp_path / name)
              for name in ("labels", "flipped")}
    assert shares["labels"] == 0.0 and shares["flipped"] == 1.0
    for bad in (train.assign(**{SOFT_TARGETS: [np.array([0.5, 0.6])] * 60}),
                train.assign(**{SOFT_TARGETS: [np.array([1.0, 0.0, 0.0])] * 60})):
        with pytest.raises(ValueError, match="soft targets must be 2 probabilities"):
            training.fine_tune(bad, task, model_cfg, cfg, progress=False)
    with pytest.raises(ValueError, match="soft targets and per-row weights"):
        training.fine_tune(as_labels.assign(weight=1.0), task, model_cfg, cfg, progress=False)


# -- the baseline ------------------------------------------------------------------------------
def _rows(pairs):
    return pd.DataFrame(pairs, columns=["text", "label"])


def test_baseline_fits_on_train_and_scores_the_test_split():
    train = _rows([("great lovely day", "positive"), ("lovely great film", "positive"),
                   ("awful bad day", "negative"), ("bad awful film", "negative"),
                   ("the bus is at noon", "neutral"), ("noon is the bus", "neutral")] * 3)
    test = _rows([("a great lovely one", "positive"), ("an awful bad one", "negative"),
                  ("the bus at noon", "neutral")])
    result = baseline.fit_and_score(train, test, TASK)
    assert result.metrics == {"accuracy": 1.0, "macro_f1": 1.0}
    assert result.predicted.tolist() == [2, 0, 1] and result.name == "tfidf+logreg"


def test_baseline_uses_the_class_weights():
    """A text with no known word is decided by the intercepts alone: the majority label
    unweighted, the heavily weighted rare label with weights."""
    train = _rows([("bad awful", "negative")] * 9 + [("good nice", "positive")]
                  + [("bus noon", "neutral")] * 5)
    test = _rows([("zebra xylophone", "positive")])
    assert baseline.fit_and_score(train, test, TASK).predicted.tolist() == [0]
    heavy = {"negative": 1.0, "neutral": 1.0, "positive": 50.0}
    assert baseline.fit_and_score(train, test, TASK, heavy).predicted.tolist() == [2]


def test_baseline_with_one_label_predicts_it():
    result = baseline.fit_and_score(_rows([("a", "neutral"), ("b", "neutral")]),
                                    _rows([("c", "neutral"), ("d", "positive")]), TASK)
    assert result.predicted.tolist() == [1, 1] and result.metrics["accuracy"] == 0.5


# -- promotion ---------------------------------------------------------------------------------
def _first(score=0.6):
    return promotion.decide("macro_f1", "1", score, None, None, 0.005)


def test_decision_says_whether_the_challenger_beats_the_baseline():
    d = promotion.with_baseline(_first(0.7), 0.65, required=False)
    assert d.promote and d.beats_baseline is True and d.baseline_score == 0.65
    assert "beats the tfidf+logreg baseline (0.7000 vs 0.6500 macro_f1)" in d.reason
    d = promotion.with_baseline(_first(0.6), 0.65, required=False)
    assert d.promote and d.beats_baseline is False and "does not beat" in d.reason


def test_require_beats_baseline_keeps_out_even_a_first_model():
    d = promotion.with_baseline(_first(0.6), 0.65, required=True)
    assert not d.promote and d.beats_baseline is False
    assert d.reason.startswith("kept out") and "require_beats_baseline" in d.reason
    assert promotion.with_baseline(_first(0.7), 0.65, required=True).promote
    kept = promotion.decide("macro_f1", "2", 0.7, "1", 0.8, 0.005)  # lost to the champion
    assert not promotion.with_baseline(kept, 0.65, required=True).promote
    assert promotion.with_baseline(_first(0.6), None, required=True).promote  # no baseline run


# -- validation rows: keep the best weights, stop early, label smoothing ----------------------
def _opposed_rows():
    """Training rows and validation rows that disagree: the better the model fits its training
    rows, the worse it scores on validation, so the best validation score comes early."""
    words = ["good", "bad"]
    train = pd.DataFrame({"text": [f"{w} thing {i}" for i in range(40) for w in words],
                          "label": ["positive", "negative"] * 40})
    validation = pd.DataFrame({"text": [f"{w} other {i}" for i in range(20) for w in words],
                               "label": ["negative", "positive"] * 20})
    return train, validation


def _fit(tiny_base, train, validation=None, **over):
    task = ClassificationTask("s", ("negative", "positive"))
    cfg = TrainingSettings(method="full", learning_rate=5e-3, max_steps=30, batch_size=16,
                           device="cpu", validation_every_steps=5, **over)
    model_cfg = Settings().model.model_copy(update={"base": tiny_base, "max_length": 16})
    result = training.fine_tune(train, task, model_cfg, cfg, progress=False,
                                validation=validation)
    scorer = None if validation is None else training.ValidationScorer(
        validation, task, result.tokenizer, model_cfg, result.model.device)
    return result, scorer


def test_keep_best_returns_the_weights_of_the_best_validation_score(tiny_base, one_thread):
    train, validation = _opposed_rows()
    result, scorer = _fit(tiny_base, train, validation)
    curve = result.validation_curve
    assert [e["step"] for e in curve] == [5, 10, 15, 20, 25, 30]
    best = result.best_validation
    assert best["macro_f1"] > curve[-1]["macro_f1"]  # the rows disagree: fitting hurts
    assert result.kept_step == best["step"] < result.steps == 30
    assert scorer.macro_f1(result.model, False) == pytest.approx(best["macro_f1"])

    last, scorer = _fit(tiny_base, train, validation, keep_best=False)
    assert last.kept_step == 30
    assert scorer.macro_f1(last.model, False) == pytest.approx(last.validation_curve[-1]["macro_f1"])


def test_early_stopping_ends_training_after_evaluations_without_a_better_score(tiny_base,
                                                                                one_thread):
    train, validation = _opposed_rows()
    result, _ = _fit(tiny_base, train, validation, early_stopping_patience=2)
    curve = result.validation_curve
    assert result.steps < 30 and result.steps == curve[-1]["step"]
    best_at = max(range(len(curve)), key=lambda i: curve[i]["macro_f1"])
    assert len(curve) - 1 - best_at == 2  # stopped at the second evaluation without a gain


def test_without_validation_rows_nothing_is_evaluated(tiny_base, one_thread):
    train, _ = _opposed_rows()
    result, _ = _fit(tiny_base, train)
    assert result.validation_curve == [] and result.kept_step is None and result.steps == 30


def test_label_smoothing_keeps_the_training_loss_off_zero(tiny_base, one_thread):
    train, _ = _opposed_rows()
    plain, _ = _fit(tiny_base, train)
    smooth, _ = _fit(tiny_base, train, label_smoothing=0.4)
    # with targets 0.8/0.2 the cross-entropy cannot fall below their entropy (0.500 nats);
    # the same run without smoothing gets below it
    assert smooth.final_loss >= 0.4999 > plain.final_loss


def test_validation_fraction_takes_a_stable_share_of_the_training_split(tmp_path):
    from labelloop import data
    from labelloop.settings import DatasetSettings

    texts = [f"text number {i}" for i in range(2000)]
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "sentiment": ["negative", "positive"] * 1000}).to_csv(
        path, index=False)
    task = ClassificationTask("sentiment", ("negative", "positive"))
    ds = DatasetSettings(path=str(path), validation_fraction=0.1)
    a, b = data.load_splits(ds, task), data.load_splits(ds, task)
    assert 120 < len(a.validation) < 280  # 10% of the 1,600 training rows, by hash
    assert list(a.validation["text"]) == list(b.validation["text"])
    plain = data.load_splits(DatasetSettings(path=str(path)), task)
    assert list(plain.test["text"]) == list(a.test["text"])  # the frozen test split is untouched
    assert set(a.train["text"]) | set(a.validation["text"]) == set(plain.train["text"])
    assert not set(a.train["text"]) & set(a.validation["text"])
    assert any("validation" in line for line in a.summary_lines())
    with pytest.raises(ValueError, match="validation or dataset.validation_fraction"):
        DatasetSettings(path=str(path), validation_fraction=0.1,
                        validation={"path": str(path)})


def test_baseline_probabilities_follow_its_predictions():
    """The baseline's probabilities (for blends): one row per test text, in task.labels order,
    summing to one, their argmax its prediction; a label it never saw gets none."""
    train = _rows([("good great fine", "positive"), ("great good", "positive"),
                   ("bad awful", "negative"), ("awful bad worse", "negative")])
    test = _rows([("good", "positive"), ("awful", "negative")])
    result = baseline.fit_and_score(train, test, TASK)
    assert result.probabilities.shape == (2, len(TASK.labels))
    assert np.allclose(result.probabilities.sum(axis=1), 1.0)
    assert result.probabilities.argmax(axis=1).tolist() == result.predicted.tolist()
    assert (result.probabilities[:, TASK.encode_label("neutral")] == 0).all()
