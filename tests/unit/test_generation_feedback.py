"""The generation half of the feedback loop: human rows into SFT/DPO rows, the held-out split,
the decision rules, the promotion rule, preference accuracy and DPO on a tiny model."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from labelloop.generation import feedback as gf
from labelloop.settings import ConfigError, load_settings
from pipelines.steps.feedback_decide import decide as decide_retrain


def store_rows(*rows):
    """Rows as LabelsStore.rows() gives them (the columns the contract names)."""
    cols = ["text", "label", "kind", "rejected", "choice", "seq", "updated_ts", "changed",
            "model_version", "shown_label"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def test_responses_latest_wins_per_prompt_and_only_responses():
    df = store_rows(
        ("hi", "hello there", "response", None, None, 1, 10.0, 1, "1", "hey"),
        ("hi", "hello again", "response", None, None, 3, 20.0, 1, "1", "hey"),
        ("bye", "goodbye", "response", None, None, 2, 15.0, 0, "1", "goodbye"),
        ("bye", "see you", "preference", "later", "a", 4, 30.0, None, "1", None),
        ("empty", "   ", "response", None, None, 5, 31.0, 1, "1", "x"),
    )
    got = gf.responses_from_rows(df).set_index("prompt")
    assert got.loc["hi", "response"] == "hello again" and got.loc["hi", "seq"] == 3
    assert got.loc["bye", "response"] == "goodbye"
    assert "empty" not in got.index and len(got) == 2


def test_rows_without_a_kind_column_are_responses():
    df = store_rows(("hi", "hello", None, None, None, 1, 1.0, 0, "1", "hello")).drop(
        columns=["kind", "rejected", "choice"])
    assert list(gf.responses_from_rows(df)["response"]) == ["hello"]
    assert gf.preferences_from_rows(df).empty


def test_preferences_only_a_or_b_with_two_different_responses():
    df = store_rows(
        ("q1", "good", "preference", "bad", "a", 1, 1.0, None, "1", None),
        ("q2", "right", "preference", "wrong", "b", 2, 2.0, None, "1", None),
        ("q3", "x", "preference", "y", "tie", 3, 3.0, None, "1", None),
        ("q4", "x", "preference", "y", "both_bad", 4, 4.0, None, "1", None),
        ("q5", "same", "preference", "same", "a", 5, 5.0, None, "1", None),
        ("q6", "  ", "preference", "y", "a", 6, 6.0, None, "1", None),
        ("q7", "r", "response", None, None, 7, 7.0, 0, "1", "r"),
    )
    got = gf.preferences_from_rows(df)
    assert list(zip(got["prompt"], got["chosen"], got["rejected"])) == [
        ("q1", "good", "bad"), ("q2", "right", "wrong")]


def test_a_prompt_is_held_out_for_every_kind_alike():
    prompts = [f"prompt number {i}" for i in range(200)]
    responses = pd.DataFrame({"prompt": prompts, "response": ["r"] * 200, "seq": range(200)})
    pairs = pd.DataFrame({"prompt": prompts, "chosen": ["a"] * 200, "rejected": ["b"] * 200,
                          "seq": range(200)})
    _, held = gf.split_by_prompt(responses, 0.2)
    _, held_pairs = gf.split_by_prompt(pairs, 0.2)
    assert set(held["prompt"]) == set(held_pairs["prompt"])
    assert 20 <= len(held) <= 60  # about a fifth
    assert gf.split_by_prompt(responses, 0.0)[1].empty


def test_sft_rows_human_wins_and_test_prompts_are_never_trained_on():
    base = pd.DataFrame({"prompt": ["a", "a", "b", "c"], "response": ["a1", "a2", "b1", "c1"]})
    test = pd.DataFrame({"prompt": ["t"], "response": ["t1"]})
    human = pd.DataFrame({"prompt": ["a", "t", "new"], "response": ["A!", "T!", "N!"]})
    rows = gf.sft_rows(base, test, human)
    assert sorted(zip(rows["prompt"], rows["response"])) == [
        ("a", "A!"), ("b", "b1"), ("c", "c1"), ("new", "N!")]
    pairs = pd.DataFrame({"prompt": ["t", "a"], "chosen": ["x", "y"], "rejected": ["z", "w"]})
    assert list(gf.dpo_pairs(pairs, test)["prompt"]) == ["a"]
    # feedback.generation.human_repeats: every human response (never a test prompt's) k times
    rows = gf.sft_rows(base, test, human, human_repeats=3)
    assert sorted(zip(rows["prompt"], rows["response"])) == sorted(
        [("a", "A!")] * 3 + [("b", "b1"), ("c", "c1")] + [("new", "N!")] * 3)
    with pytest.raises(ValueError, match="human_repeats"):
        gf.sft_rows(base, test, human, human_repeats=0)


def test_human_digest_is_order_free_and_sees_every_kind():
    r = pd.DataFrame({"prompt": ["a", "b"], "response": ["1", "2"]})
    p = pd.DataFrame({"prompt": ["c"], "chosen": ["x"], "rejected": ["y"]})
    empty = p.iloc[0:0]
    assert gf.human_digest(r, p) == gf.human_digest(r.iloc[::-1], p)
    assert gf.human_digest(r, p) != gf.human_digest(r, empty)
    flipped = p.assign(chosen=["y"], rejected=["x"])
    assert gf.human_digest(r, p) != gf.human_digest(r, flipped)


def settings_gen(**feedback):
    return load_settings("configs/generation.yaml", environ={},
                         overrides={"feedback": feedback} if feedback else None)


def test_fresh_rules_need_enough_answers_and_name_the_setting():
    cfg = settings_gen().feedback
    low = {"responses": 5, "pairs": 5, "chrf": 0.2, "preference_accuracy": 0.2}
    reasons = gf.fresh_reasons(low, cfg)
    assert len(reasons) == 2
    assert "min_fresh_chrf" in reasons[0] and "min_preference_accuracy" in reasons[1]
    assert gf.fresh_reasons({**low, "responses": 2, "pairs": 2}, cfg) == []  # < min_fresh_labels
    good = {"responses": 5, "pairs": 5, "chrf": 0.9, "preference_accuracy": 0.8}
    assert gf.fresh_reasons(good, cfg) == [] and gf.fresh_reasons(None, cfg) == []


def fresh_eval(**kw):
    base = {"family": "generation", "champion": {"version": "1", "labels_seq": 0, "test": {}},
            "fresh_labels": 0, "fresh": None, "new_labels_since_last_retrain": 0,
            "new_trainable_labels": 0, "human_digest": "d1", "last_retrain_digest": None}
    return {**base, **kw}


def test_the_decision_for_generation():
    cfg = settings_gen().feedback
    keep = decide_retrain(fresh_eval(new_labels_since_last_retrain=3), cfg)
    assert not keep["retrain"] and keep["metric"] == "chrf"
    button = decide_retrain(fresh_eval(new_trainable_labels=2),
                            cfg, "label-studio: start training")
    assert button["retrain"] and "asked for training" in button["reason"]
    same = decide_retrain(fresh_eval(new_trainable_labels=2, last_retrain_digest="d1"),
                          cfg, "label-studio: start training")
    assert not same["retrain"] and "identical" in same["reason"]
    fresh = {"responses": 4, "pairs": 0, "chrf": 0.1, "preference_accuracy": None}
    bad = decide_retrain(fresh_eval(fresh=fresh, fresh_labels=4), cfg)
    assert bad["retrain"] and "min_fresh_chrf" in bad["reason"]
    assert bad["fresh_score"] == 0.1 and "chrF 0.1000" in bad["estimate"]


def gen_decide(interval, heldout=None, preferences=None, corrections=None, chal=0.40,
               champ=0.40):
    return gf.decide("chrf", "3", "2", chal, champ, interval, 0.005, 0.95, heldout=heldout,
                     preferences=preferences, corrections=corrections, max_loss=0.01)


def h(n, champion, challenger):
    return {"n": n, "champion": champion, "challenger": challenger}


def test_promotion_rule_for_generation():
    # worse beyond chance on the test split: kept, whatever the human data say
    d = gen_decide((-0.05, -0.01), heldout=h(5, 0.2, 0.9), chal=0.37)
    assert not d.promote and "worse beyond chance" in d.reason
    # within noise on the test split and better on held-out human data: promoted
    d = gen_decide((-0.01, 0.02), heldout=h(5, 0.5, 0.7))
    assert d.promote and "better on held-out human data" in d.reason
    d = gen_decide((-0.01, 0.02), preferences=h(4, 0.25, 0.75))
    assert d.promote
    # better beyond chance on test but worse on held-out human responses: kept
    d = gen_decide((0.01, 0.05), heldout=h(5, 0.7, 0.5), chal=0.45)
    assert not d.promote and "worse on held-out human data" in d.reason
    # mixed or tied held-out evidence: kept
    assert not gen_decide((-0.01, 0.02), heldout=h(5, 0.5, 0.7),
                          preferences=h(4, 0.75, 0.25)).promote
    assert not gen_decide((-0.01, 0.02), heldout=h(5, 0.5, 0.5)).promote
    # no held-out human data: the test split, then the trained responses decide
    assert gen_decide((0.01, 0.05), chal=0.45).promote
    d = gen_decide((-0.01, 0.02), corrections=h(6, 0.3, 0.8))
    assert d.promote and "closer to the human responses it trained on" in d.reason
    assert not gen_decide((-0.01, 0.02), corrections=h(6, 0.8, 0.3)).promote
    # ...but the responses it trained on do not excuse a test loss beyond promotion.max_loss
    d = gen_decide((-0.06, 0.02), corrections=h(6, 0.3, 0.8), chal=0.38)
    assert not d.promote and "more than promotion.max_loss 0.01" in d.reason
    # ...nor losses that add up over turns: 0.008 below the champion, 0.015 below v1
    d = gf.decide("chrf", "3", "2", 0.392, 0.40, (-0.03, 0.02), 0.005, 0.95,
                  corrections=h(6, 0.3, 0.8), max_loss=0.01, best=("1", 0.407))
    assert not d.promote and "below v1 (0.4070), the best champion on this test split" in d.reason
    assert gf.decide("chrf", "3", "2", 0.392, 0.40, (-0.03, 0.02), 0.005, 0.95,
                     corrections=h(6, 0.3, 0.8), max_loss=0.01, best=("1", 0.40)).promote
    # the first model
    first = gf.decide("chrf", "1", None, 0.3, None, None, 0.005, 0.95, max_loss=0.01)
    assert first.promote and first.human["heldout"] == {}


def test_warm_rule_without_a_champion_is_one_error_before_any_work(tmp_path):
    s = load_settings("configs/generation.yaml", environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "feedback": {"train_rule": "warm"}})
    with pytest.raises(ConfigError, match="train_rule is warm but there is no champion"):
        gf.preflight(s)


def test_warm_rows_repeat_the_humans_and_replay_a_stable_sample():
    base = pd.DataFrame({"prompt": [f"p{i}" for i in range(10)],
                         "response": [f"r{i}" for i in range(10)]})
    test = pd.DataFrame({"prompt": ["t"], "response": ["t1"]})
    human = pd.DataFrame({"prompt": ["p0", "t", "new"], "response": ["P0!", "T!", "N!"]})
    rows = gf.warm_rows(base, test, human, replay_rows=4, repeats=3, seed=7)
    pairs = list(zip(rows["prompt"], rows["response"]))
    assert pairs.count(("p0", "P0!")) == 3 and pairs.count(("new", "N!")) == 3
    assert ("t", "T!") not in pairs and ("p0", "r0") not in pairs  # test prompts, replaced rows
    replay = [p for p in pairs if p[1].startswith("r")]
    assert len(replay) == 4 and len(set(replay)) == 4
    assert gf.warm_rows(base, test, human, 4, 3, seed=7).equals(rows)  # stable
    assert len(gf.warm_rows(base, test, human, 100, 1, seed=7)) == 9 + 2  # all the rest
    with pytest.raises(ValueError, match="repeats"):
        gf.warm_rows(base, test, human, 4, 0, seed=7)


def test_preference_accuracy_counts_ties_half():
    import numpy as np

    from labelloop.generation.preference import accuracy_from_logps

    assert accuracy_from_logps(np.array([-1.0, -5.0, -2.0]), np.array([-2.0, -1.0, -2.0])) == 0.5
    assert math.isnan(accuracy_from_logps(np.array([]), np.array([])))


def test_dpo_moves_the_likelihood_towards_the_chosen_responses(tmp_path):
    """Real TRL DPOTrainer + LoRA on a tiny random causal LM: preference accuracy on the
    trained pairs goes up, and the returned model is a plain (merged) model."""
    from transformers import AutoModelForCausalLM

    from labelloop.generation import base, preference
    from tests.helpers import tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "tiny")
    settings = load_settings("configs/generation.yaml", environ={}, overrides={
        "model": {"base": str(model_dir), "max_length": 64}, "training": {"device": "cpu"},
        "feedback": {"generation": {"dpo": {"learning_rate": 0.01, "epochs": 6,
                                            "batch_size": 4}}}})
    tok = base.load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    pairs = pd.DataFrame({
        "prompt": ["hello", "what is your name", "tell me a joke", "how are you"],
        "chosen": ["hello how are you", "my name is bot", "a joke", "I am fine"],
        "rejected": ["name name", "hello", "fine thank you", "what is"]})
    before = preference.preference_accuracy(model, tok, pairs, settings)
    result = preference.dpo_tune(model, tok, pairs, settings, progress=False)
    after = preference.preference_accuracy(result.model, tok, pairs, settings)
    assert result.steps == 6 and not hasattr(result.model, "peft_config")
    assert after == 1.0 and after > before, (before, after)


def test_demo_task_generation_picks_its_profile(monkeypatch):
    from pipelines import demo

    monkeypatch.delenv("LABELLOOP_CONFIG", raising=False)
    monkeypatch.setattr(demo, "_has_cuda", lambda: False)
    assert demo.base_config(None, "generation").endswith("configs/demo-generation.yaml")
    assert demo.base_config(None).endswith("configs/demo.yaml")
    monkeypatch.setattr(demo, "_has_cuda", lambda: True)
    assert demo.base_config(None, "generation").endswith("configs/generation.yaml")
    assert demo.base_config(None) is None
    assert demo.base_config("mine.yaml", "generation") == "mine.yaml"
    with pytest.raises(ConfigError, match="unknown demo task"):
        demo.base_config(None, "translation")
    s = load_settings(demo.TASK_CONFIGS["generation"][0], environ={})
    assert s.task.type == "generation" and s.serving.port != 3000 and s.studio.port != 8080
    assert s.data_path.name == "generation"


def test_sft_and_dpo_show_one_progress_bar_not_the_trainers_log_dicts(tmp_path, capsys):
    """Regression: the HF Trainer's console callback printed every log dict under its bar
    ({'loss': ..., 'grad_norm': ..., 'entropy': ...} per step, then a train_runtime dict),
    burying the pipeline's lines in `make demo TASK=generation`. Now: one named bar each."""
    from transformers import AutoModelForCausalLM

    from labelloop.generation import base, preference, training
    from tests.helpers import tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "tiny")
    settings = load_settings("configs/generation.yaml", environ={}, overrides={
        "model": {"base": str(model_dir), "max_length": 64},
        "training": {"device": "cpu", "method": "full", "batch_size": 2, "epochs": 1,
                     "log_every_steps": 1},
        "feedback": {"generation": {"dpo": {"epochs": 1, "batch_size": 2}}}})
    rows = pd.DataFrame({"prompt": ["hello", "how are you", "bye", "thanks"],
                         "response": ["hi there", "fine", "goodbye", "you are welcome"]})
    sft = training.fine_tune(rows, settings, progress=True)
    pairs = pd.DataFrame({"prompt": ["hello", "bye"], "chosen": ["hi there", "goodbye"],
                          "rejected": ["bye", "hello"]})
    tok = base.load_tokenizer(str(model_dir))
    dpo = preference.dpo_tune(AutoModelForCausalLM.from_pretrained(str(model_dir)), tok, pairs,
                              settings, progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert sft.steps == 2 and dpo.steps == 1
    assert "fine-tune (SFT, full, cpu)" in text and "DPO (lora, cpu)" in text, text[-2000:]
    assert "\r" not in text  # whole lines in a log, not tqdm's redraws
    assert "'loss'" not in text and "train_runtime" not in text and "grad_norm" not in text, \
        text[-2000:]


def test_the_default_method_and_learning_rate_train_a_generation_model(tmp_path, capsys):
    """Regression: `training.learning_rate: auto` (the default) reached the optimizer as the
    string "auto" for generation (`'<=' not supported between 'float' and 'str'`), so a config
    that set neither method nor rate crashed in fine_tune; `method: auto` meant full. Now the
    family resolves them: LoRA at 5e-4."""
    from labelloop.generation import training
    from labelloop.settings import Settings
    from tests.helpers import tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "tiny")
    settings = Settings(data_dir=str(tmp_path / "data"), task={"type": "generation"},
                        model={"base": str(model_dir), "max_length": 64},
                        training={"device": "cpu", "batch_size": 2, "epochs": 1})
    assert (settings.training.method, settings.training.learning_rate) == ("auto", "auto")
    rows = pd.DataFrame({"prompt": ["hello", "bye"], "response": ["hi there", "goodbye"]})
    sft = training.fine_tune(rows, settings, progress=True)
    assert sft.steps == 1
    assert "fine-tune (SFT, lora, cpu)" in capsys.readouterr().err
    resolved = training.resolve(settings.training.model_copy(update={"method": "full"}))
    assert (resolved.method, resolved.learning_rate) == ("full", 1e-4)
