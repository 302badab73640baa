"""Truncation strategies and the model's recorded cleaning, as training and serving read texts."""

from __future__ import annotations

import json

import pytest

from labelloop import modeling
from labelloop.cleaning import Cleaning
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

BASE = modeling.resolve_base_model(Settings().model.base)


@pytest.fixture(scope="module")
def tokenizer():
    return modeling.load_tokenizer(BASE)


def words(n: int, prefix: str) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


@pytest.mark.parametrize("strategy", ["head", "tail", "head_tail"])
def test_truncation_keeps_the_right_tokens(tokenizer, strategy):
    text = "start " + words(200, "w") + " finish"
    ids = modeling.encode_texts(tokenizer, [text], 16, strategy)[0]
    assert len(ids) == 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    decoded = tokenizer.decode(ids[1:-1])
    assert decoded.startswith("start") == (strategy in ("head", "head_tail"))
    assert decoded.endswith("finish") == (strategy in ("tail", "head_tail"))
    short = modeling.encode_texts(tokenizer, ["a short text"], 16, strategy)[0]
    assert short == tokenizer("a short text")["input_ids"]  # nothing to cut: the same ids


def test_head_tail_splits_a_quarter_and_three_quarters():
    assert modeling.select_tokens(list(range(100)), 8, "head_tail") == [0, 1, 94, 95, 96, 97, 98, 99]
    assert modeling.select_tokens(list(range(100)), 8, "tail") == list(range(92, 100))


@pytest.mark.parametrize("strategy", ["head", "tail", "head_tail"])
def test_training_and_the_classifier_read_the_same_tokens(tmp_path, tokenizer, strategy):
    """No train/serve skew: the padded training tensors and the served ids are the same tokens,
    after the same cleaning (the served text arrives raw, training's was cleaned at load)."""
    settings = Settings(model={"max_length": 24, "truncation": strategy})
    task = task_from_settings(settings)
    cleaning = Cleaning(html_entities=True, whitespace="collapse")
    model = modeling.load_base_classifier(BASE, task)
    bundle = modeling.save_bundle(model, tokenizer, tmp_path / "b", {
        "task": task.to_dict(), "max_length": 24, **modeling.text_meta(cleaning, strategy)})
    clf = modeling.Classifier(bundle, device="cpu")
    assert clf.cleaning == cleaning and clf.truncation == strategy
    raw = ["I&#039;m   &quot;fine&quot;", "  first " + words(300, "x") + "  the &amp; end  "]
    trained = modeling.tokenize_padded(tokenizer, [cleaning(t) for t in raw], 24, strategy)
    served = clf.encode(raw)
    for row, ids in enumerate(served):
        n = int(trained["attention_mask"][row].sum())
        assert trained["input_ids"][row, :n].tolist() == ids
    assert clf.max_chars == (modeling.max_chars_for(24) if strategy == "head" else 10**9)
    # a bundle that records nothing (older models) cleans nothing and reads the head
    meta = json.loads((bundle / "labelloop.json").read_text())
    for key in ("cleaning", "truncation"):
        meta.pop(key)
    (bundle / "labelloop.json").write_text(json.dumps(meta))
    old = modeling.Classifier(bundle, device="cpu")
    assert old.cleaning.is_identity and old.truncation == "head"
    assert old.encode(["I&#039;m"])[0] == tokenizer("I&#039;m")["input_ids"]


def test_service_metadata_shows_provenance_and_cleaning(tmp_path, tokenizer):
    from services.runtime import LoadedModel

    settings = Settings()
    task = task_from_settings(settings)
    model = modeling.load_base_classifier(BASE, task)
    record = {"sources": [{"role": "train", "uri": "/d/train.csv", "kind": "file",
                           "digest": "ab" * 32, "rows": 10}],
              "source_digest": "s1", "test_digest": "t1", "human_digest": "none",
              "human_rows": 0, "labels_seq": None, "dataset_digest": "d1",
              **modeling.text_meta(Cleaning(html_entities=True), "tail")}
    bundle = modeling.save_bundle(model, tokenizer, tmp_path / "b", {
        "task": task.to_dict(), "max_length": 16, **record})
    meta = LoadedModel("3", modeling.Classifier(bundle, device="cpu")).metadata(settings)
    assert meta["source_digest"] == "s1" and meta["test_digest"] == "t1"
    assert meta["sources"][0]["uri"] == "/d/train.csv" and meta["truncation"] == "tail"
    assert meta["cleaning"]["html_entities"] is True and meta["human_digest"] == "none"
