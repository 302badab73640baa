"""Task-adaptive pretraining (labelloop/adaptation.py): BERT's masking, and an adapted base that
is a plain encoder directory with the base's pooler and pooling."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from labelloop import adaptation, modeling
from labelloop.modeling import ModelError
from labelloop.tasks import ClassificationTask

TEXTS = [f"the {w} tweet number {i} #{w}" for i, w in enumerate(["odd", "lovely", "bad"] * 6)]


def test_masking_predicts_real_tokens_only():
    ids = torch.tensor([[101, 11, 12, 13, 102, 0, 0], [101, 21, 22, 23, 24, 25, 102]])
    attention = (ids != 0).long()
    special = (ids == 101) | (ids == 102) | (ids == 0)
    gen = torch.Generator().manual_seed(0)
    inputs, labels = adaptation.mask_tokens(ids, attention, special, mask_id=103, vocab_size=30,
                                            probability=1.0, generator=gen)
    real = attention.bool() & ~special
    assert torch.equal(labels[real], ids[real])  # every real token is predicted ...
    assert bool((labels[~real] == -100).all())  # ... and no special or padding one
    assert torch.equal(inputs[~real], ids[~real])
    assert int((inputs[real] == 103).sum()) >= 4  # most chosen ones read [MASK] (80%)
    inputs, labels = adaptation.mask_tokens(ids, attention, special, 103, 30, 0.0, gen)
    assert torch.equal(inputs, ids) and bool((labels == -100).all())


@pytest.fixture
def sentence_base(tiny_base, tmp_path):
    """The tiny BERT as a sentence-transformers model: its 1_Pooling says mean tokens."""
    path = tmp_path / "sentence-base"
    shutil.copytree(tiny_base, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return str(path)


def test_adapted_base_learns_the_texts_and_keeps_the_pooler_and_pooling(sentence_base, tmp_path,
                                                                         one_thread):
    result = adaptation.adapt_base(sentence_base, TEXTS + TEXTS[:3], tmp_path / "adapted",
                                   epochs=20, batch_size=6, learning_rate=5e-3, device="cpu")
    assert result.texts == len(TEXTS)  # duplicates count once
    assert result.steps == 60
    assert result.final_loss < result.first_loss - 1.0
    before = modeling.load_base_classifier(sentence_base, ClassificationTask("t", ("a", "b")))
    after = modeling.load_base_classifier(str(result.path), ClassificationTask("t", ("a", "b")))
    assert getattr(after.config, modeling.POOLING_KEY) == "mean"  # pooling: auto still finds it
    old, new = before.state_dict(), after.state_dict()
    assert torch.equal(old["bert.pooler.dense.weight"], new["bert.pooler.dense.weight"])
    assert not torch.equal(old["bert.encoder.layer.0.output.dense.weight"],
                           new["bert.encoder.layer.0.output.dense.weight"])


def test_head_only_steps_leave_the_encoder_as_it_was(tiny_base, tmp_path, one_thread):
    result = adaptation.adapt_base(tiny_base, TEXTS, tmp_path / "a", epochs=2, batch_size=6,
                                   learning_rate=5e-3, device="cpu", head_only_fraction=1.0)
    old = modeling.load_base_classifier(tiny_base, ClassificationTask("t", ("a", "b"))).state_dict()
    new = modeling.load_base_classifier(str(result.path),
                                        ClassificationTask("t", ("a", "b"))).state_dict()
    for key in old:
        if key.startswith("bert."):
            assert torch.equal(old[key], new[key]), key


def test_no_texts_is_one_error(tiny_base, tmp_path):
    with pytest.raises(ModelError, match="needs texts"):
        adaptation.adapt_base(tiny_base, ["", ""], tmp_path / "a", device="cpu")
