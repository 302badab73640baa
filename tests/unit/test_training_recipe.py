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


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A one-layer random BERT with MiniLM's tokenizer: fine_tune runs in a second on a CPU."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from labelloop.modeling import resolve_base_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(Settings().model.base))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def one_thread():
    """On a busy 2-core box, two torch threads cost a tiny model 15x more per step than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_class_weights_move_what_the_model_predicts(tiny_base, one_thread, tmp_path):
    """Same rows, same seed: a heavy weight on the rare label makes the model predict it."""
    from labelloop.modeling import Classifier, save_bundle

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
        bundle = save_bundle(result.model, result.tokenizer, tmp_path / f"b{len(shares)}",
                             {"task": task.to_dict(), "max_length": 16, "base_model": "tiny"})
        preds = Classifier(bundle, device="cpu").predict(texts)
        shares[str(weights)] = np.mean([p.label == "positive" for p in preds])
    assert shares["off"] < 0.5 < shares[str({"positive": 30.0})]


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
