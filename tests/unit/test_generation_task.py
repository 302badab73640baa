"""The generation task family: task definition, settings, chat formatting, bundle round trip."""

from __future__ import annotations

import json

import pytest

from labelloop.settings import ConfigError, load_settings
from labelloop.tasks import (ClassificationTask, Generation, GenerationTask, LabelError,
                             task_from_dict, task_from_settings)
from tests.helpers import tiny_generation_bundle


def test_generation_task_round_trip_and_rows():
    task = GenerationTask(name="chat")
    assert task.to_dict() == {"type": "generation", "name": "chat"}
    assert task_from_dict(task.to_dict()) == task
    assert task.promotion_metrics == ("chrf", "rouge_l")
    assert task.row_columns == ("prompt", "response")
    assert task.row_from_answer("Hi?", [" Hello. "]) == {"prompt": "Hi?", "response": "Hello."}
    for prompt, answer, match in [("Hi", "", "response is empty"), (" ", "x", "prompt is empty"),
                                  ("Hi", ["a", "b"], "exactly one")]:
        with pytest.raises(LabelError, match=match):
            task.row_from_answer(prompt, answer)
    assert task.messages("Hi", "Be brief.") == [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Hi"}]
    assert Generation("x", "length", 3, 5).to_dict() == {
        "text": "x", "finish_reason": "length", "prompt_tokens": 3, "completion_tokens": 5}


def test_classification_task_unchanged():
    task = task_from_dict({"type": "classification", "name": "s", "labels": ["a", "b"]})
    assert isinstance(task, ClassificationTask) and task.promotion_metrics == ("macro_f1", "accuracy")


def test_settings_generation_family_defaults_and_errors():
    s = load_settings(overrides={"task": {"type": "generation", "name": "chat"}}, environ={})
    assert isinstance(task_from_settings(s), GenerationTask)
    assert s.promotion.metric == "chrf"            # the family's default metric
    assert load_settings(environ={}).promotion.metric == "macro_f1"
    s = load_settings(overrides={"task": {"type": "generation"}, "promotion": {"metric": "rouge_l"}},
                      environ={})
    assert s.promotion.metric == "rouge_l"
    with pytest.raises(ConfigError, match="promotion.metric 'macro_f1' is not a generation metric"):
        load_settings(overrides={"task": {"type": "generation"},
                                 "promotion": {"metric": "macro_f1"}}, environ={})
    with pytest.raises(ConfigError, match="'chrf' is not a classification metric"):
        load_settings(overrides={"promotion": {"metric": "chrf"}}, environ={})
    with pytest.raises(ConfigError, match="model.init"):
        load_settings(overrides={"model": {"init": "random"}}, environ={})
    with pytest.raises(ConfigError, match="model.init scratch trains every weight"):
        load_settings(overrides={"model": {"init": "scratch"}}, environ={})
    assert load_settings(overrides={"model": {"init": "scratch"}, "training": {"method": "full"}},
                         environ={}).model.init == "scratch"


def test_chat_formatting_masks_the_prompt_and_fits_long_prompts(tmp_path):
    from labelloop.generation import bundle, chat

    g = bundle.load_generation_bundle(tiny_generation_bundle(tmp_path / "b"), device="cpu")
    tok = g.tokenizer
    msgs = chat.messages_for("hello how are you", "be kind")
    assert msgs[0] == {"role": "system", "content": "be kind"}
    prompt = chat.prompt_ids(tok, msgs, 128)
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    ids, labels = chat.example_ids(tok, msgs, "I am fine", 128, 256)
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)
    assert tok.decode([t for t in labels if t != -100]) == "I am fine<|im_end|>\n"
    # A long prompt loses the start of its last message, never the template around it.
    long_msgs, long_ids = chat.fit_prompt(tok, chat.messages_for("hello how are you " * 30), 40)
    assert len(long_ids) <= 40 and tok.decode(long_ids).startswith("<|im_start|>user\n")
    assert tok.decode(long_ids).endswith("<|im_start|>assistant\n")
    ids, labels = chat.example_ids(tok, msgs, "fine " * 100, 128, 30)
    assert len(ids) == len(labels) == 30
    # A chat's later answer: the earlier turns are the prompt, one string that reads back as
    # them; too long, it loses its oldest turns first, the system message and question stay.
    turns = [{"role": "system", "content": "be kind"},
             {"role": "user", "content": "first question " * 10},
             {"role": "assistant", "content": "first answer " * 10},
             {"role": "user", "content": "and then?"}]
    prompt_text = chat.conversation_prompt(turns)
    assert prompt_text.startswith(chat.CONVERSATION_START)
    assert chat.messages_for(prompt_text, "other system") == turns
    assert chat.conversation_prompt(turns[-1:]) == "and then?"  # a plain prompt stays plain
    assert chat.messages_for('[{"role": nope') == [{"role": "user", "content": '[{"role": nope'}]
    fitted, fitted_ids = chat.fit_prompt(tok, chat.messages_for(prompt_text), 40)
    assert fitted == [turns[0], turns[-1]] and len(fitted_ids) <= 40
    full, _ = chat.fit_prompt(tok, chat.messages_for(prompt_text), 500)
    assert full == turns


def test_bundle_meta_and_wrong_family(tmp_path):
    from labelloop.generation import bundle
    from labelloop.modeling import ModelError

    d = tiny_generation_bundle(tmp_path / "b", max_prompt_tokens=64)
    g = bundle.load_generation_bundle(d, device="cpu")
    assert g.task == GenerationTask("chat") and g.max_prompt_tokens == 64
    assert g.tokenizer.padding_side == "left" and g.tokenizer.pad_token is not None
    meta = json.loads((d / "labelloop.json").read_text())
    (d / "labelloop.json").write_text(json.dumps({**meta, "task": {"type": "classification",
                                                                   "name": "s", "labels": ["a", "b"]}}))
    with pytest.raises(ModelError, match="not a generation model"):
        bundle.load_generation_bundle(d, device="cpu")


def test_labels_store_rows_in_the_family_columns(tmp_path):
    from labelloop import labels_store
    from labelloop.labels_store import LabelRecord
    from labelloop.settings import Settings

    settings = Settings(data_dir=str(tmp_path), task={"type": "generation", "name": "chat"})
    row = GenerationTask("chat").row_from_answer("How are you?", "Fine, thanks.")
    with labels_store.open_store(settings) as store:
        store.upsert(LabelRecord(source="label-studio", project="1", annotation_id="1",
                                 text=row["prompt"], label=row["response"],
                                 kind="response", updated_at="2026-01-01T00:00:00Z"))
    rows = labels_store.training_rows(settings)
    assert rows[["prompt", "response"]].values.tolist() == [["How are you?", "Fine, thanks."]]
    # a classification task trains on `label` rows only, never on a generation answer
    classification = Settings(data_dir=str(tmp_path))
    assert labels_store.training_rows(classification).empty
