"""Classifier inference split in two (encode -> logits_from_ids), CUDA-graph shape buckets, and
the bundle's decision bias applied on every prediction path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelloop import modeling
from labelloop.cuda_graphs import batch_buckets, bucket, seq_buckets
from labelloop.settings import load_settings
from labelloop.tasks import task_from_settings
from services.runtime import Encoded, LoadedModel, predict_requests

TEXTS = [
    "ok",
    "I love this phone, the battery lasts for days and the screen is gorgeous!!",
    "worst service ever",
    "meh",
    "The flight was delayed three hours and nobody at the gate could tell us why, unbelievable.",
    "fine",
    "good morning",
    "not sure how I feel about the new update",
    "an average day",
] * 5


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> modeling.Classifier:
    settings = load_settings()
    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    modeling.save_bundle(modeling.load_base_classifier(base, task), modeling.load_tokenizer(base),
                         out, {"task": task.to_dict(), "max_length": 24, "version": "7"})
    return modeling.Classifier(out, device="cpu")


def test_encode_matches_the_hf_tokenizer_and_truncates(classifier):
    want = classifier.tokenizer(TEXTS, truncation=True, max_length=24)["input_ids"]
    assert classifier.encode(TEXTS) == [list(x) for x in want]  # batch path
    assert len(TEXTS) > modeling.SMALL_ENCODE
    assert classifier.encode(TEXTS[:3]) == [list(x) for x in want[:3]]  # one-by-one path
    assert len(classifier.encode(["word " * 1000])[0]) == 24


def test_logits_from_ids_equal_one_padded_batch_in_input_order(classifier):
    enc = classifier.tokenizer(TEXTS, padding=True, truncation=True, max_length=24,
                               return_tensors="pt")
    with torch.inference_mode():
        want = classifier.model(**enc).logits.numpy()
    for chunk in (1, 4, 16):  # chunking by sorted length must not reorder or change results
        classifier.cpu_chunk = chunk
        got = classifier.logits(TEXTS, batch_size=32)
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert classifier.logits([]).shape == (0, 3)


def test_predict_requests_keeps_request_boundaries_and_reencodes_for_another_version(classifier):
    model = LoadedModel(version="7", classifier=classifier)
    ids = classifier.encode(TEXTS[:2])
    stale = Encoded(TEXTS[2:4], [[101, 102], [101, 102]], version="6")  # wrong on purpose
    out = predict_requests(model, [Encoded(TEXTS[:2], ids, "7"), stale, TEXTS[4:7]])
    assert [len(x) for x in out] == [2, 2, 3]
    flat = [p for request in out for p in request]
    want = [p.to_dict() for p in classifier.predict(TEXTS[:7])]
    for got, exp in zip(flat, want):
        assert got["label"] == exp["label"]
        assert got["score"] == pytest.approx(exp["score"], abs=1e-5)


def test_enable_cuda_graphs_refuses_a_cpu_model(classifier):
    with pytest.raises(modeling.ModelError, match="CUDA"):
        classifier.enable_cuda_graphs(8)


def test_shape_buckets():
    assert batch_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert seq_buckets(64) == [16, 32, 48, 64]
    assert seq_buckets(40) == [16, 32, 40]
    assert bucket(17, [16, 32]) == 32 and bucket(16, [16, 32]) == 16
    with pytest.raises(ValueError):
        bucket(33, [16, 32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_match_eager_on_gpu(classifier):
    gpu = modeling.Classifier(classifier.bundle_dir, device="cuda")
    eager = gpu.logits(TEXTS)
    gpu.enable_cuda_graphs(16)
    np.testing.assert_allclose(gpu.logits(TEXTS), eager, atol=5e-2)
    gpu.decision_bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)  # added after the graphs
    np.testing.assert_allclose(gpu.logits(TEXTS), eager + gpu.decision_bias, atol=5e-2)


def test_graph_runner_pads_to_captured_shapes_and_matches_eager(classifier):
    """GraphedForward's padding, masks and bucket lookup, on CPU: each "graph" here replays the
    eager model on its static buffers (capture itself needs a GPU; see the test below)."""
    import threading

    from labelloop.cuda_graphs import GraphedForward

    eager = classifier.logits(TEXTS)
    runner = object.__new__(GraphedForward)
    runner.batches, runner.lengths = batch_buckets(16), seq_buckets(classifier.max_length, 8)
    runner.max_batch, runner.pad_token_id = 16, classifier.pad_token_id
    runner._lock, runner._stream = threading.Lock(), None  # torch.cuda.stream(None): no-op

    class Replay:
        def __init__(self, ids, mask, out):
            self.ids, self.mask, self.out = ids, mask, out

        def replay(self):
            with torch.inference_mode():
                self.out.copy_(classifier.model(input_ids=self.ids, attention_mask=self.mask).logits)

    runner._graphs = {}
    for b in runner.batches:
        for n in runner.lengths:
            ids, mask = torch.zeros(b, n, dtype=torch.long), torch.zeros(b, n, dtype=torch.long)
            out = torch.zeros(b, 3)
            runner._graphs[(b, n)] = (Replay(ids, mask, out), ids, mask, out)
    classifier.graphs = runner
    try:
        np.testing.assert_allclose(classifier.logits(TEXTS, batch_size=32), eager, atol=1e-4)
        # a decision bias is added on this path too
        classifier.decision_bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)
        np.testing.assert_allclose(classifier.logits(TEXTS, batch_size=32),
                                   eager + classifier.decision_bias, atol=1e-4)
    finally:
        classifier.graphs = None
        classifier.decision_bias = None


# -- the decision bias (training.decision_bias; labelloop/decision.py) ----------------------------
OFFSETS = {"negative": -0.5, "neutral": 0.0, "positive": 1.5}


@pytest.fixture(scope="module")
def biased(classifier, tmp_path_factory) -> modeling.Classifier:
    """The same model, its bundle recording decision offsets."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("biased") / "bundle"
    shutil.copytree(classifier.bundle_dir, out)
    meta = json.loads((out / modeling.BUNDLE_META).read_text())
    meta["decision_bias"] = {"rule": "macro_f1", "offsets": OFFSETS, "validation_rows": 9,
                             "validation_macro_f1_before": 0.3, "validation_macro_f1": 0.4}
    (out / modeling.BUNDLE_META).write_text(json.dumps(meta))
    return modeling.Classifier(out, device="cpu")


def test_classifier_adds_the_bundles_offsets_to_logits_and_predictions(classifier, biased):
    offsets = np.array([OFFSETS[lab] for lab in biased.labels], dtype=np.float32)
    raw = classifier.logits(TEXTS)
    np.testing.assert_allclose(biased.raw_logits(TEXTS), raw, atol=1e-5)
    np.testing.assert_allclose(biased.logits(TEXTS), raw + offsets, atol=1e-5)
    assert classifier.decision_bias is None
    # predictions and their probabilities come from the offset logits: the label shown is the
    # most probable one, and these offsets (on a random head's small logits) make it positive
    preds = biased.predict(TEXTS)
    assert {p.label for p in preds} == {"positive"}
    z = raw + offsets
    want = np.exp(z - z.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    for p, row in zip(preds, want):
        assert [p.probabilities[lab] for lab in biased.labels] == pytest.approx(list(row),
                                                                               abs=1e-5)
        assert p.score == pytest.approx(row.max(), abs=1e-5)
    assert {p.label for p in classifier.predict(TEXTS)} != {"positive"}  # raw: not all positive


def test_service_prediction_path_decides_with_the_bias(classifier, biased):
    """services.runtime.predict_requests (what /classify, /classify_batch and the Label Studio
    backend call) gives the biased bundle's predictions, for pre-encoded and raw requests."""
    model = LoadedModel(version="8", classifier=biased)
    encoded = Encoded(TEXTS[:3], biased.encode(TEXTS[:3]), "8")
    out = predict_requests(model, [encoded, TEXTS[3:9]])
    flat = [p for request in out for p in request]
    want = [p.to_dict() for p in biased.predict(TEXTS[:9])]
    assert [p["label"] for p in flat] == [p["label"] for p in want] == ["positive"] * 9
    for got, exp in zip(flat, want):
        assert got["score"] == pytest.approx(exp["score"], abs=1e-5)
    plain = predict_requests(LoadedModel(version="7", classifier=classifier), [TEXTS[:9]])[0]
    assert [p["label"] for p in plain] != [p["label"] for p in flat]


def test_pool_scores_use_the_bias(biased):
    from labelloop import selection

    scores = selection.score_texts(biased, TEXTS[:9])
    want = [[p.probabilities[lab] for lab in biased.labels] for p in biased.predict(TEXTS[:9])]
    np.testing.assert_allclose(scores.probabilities, want, atol=1e-4)


def test_fit_for_bundle_records_offsets_that_the_next_classifier_applies(classifier, tmp_path):
    import shutil

    import pandas as pd

    from labelloop import decision

    bundle = tmp_path / "bundle"
    shutil.copytree(classifier.bundle_dir, bundle)
    # labels the random head gets wrong at argmax: all the rarest-scored label
    raw = classifier.raw_logits(TEXTS[:9])
    target = classifier.labels[int(raw.mean(axis=0).argmin())]
    rows = pd.DataFrame({"text": TEXTS[:9], "label": [target] * 9})
    record = decision.fit_for_bundle(bundle, rows, device="cpu", min_rows_per_label=0)
    assert record["rule"] == "macro_f1" and record["validation_rows"] == 9
    assert record["validation_macro_f1"] > record["validation_macro_f1_before"]
    fitted = modeling.Classifier(bundle, device="cpu")
    assert fitted.meta["decision_bias"] == record
    assert {p.label for p in fitted.predict(TEXTS[:9])} == {target}
    with pytest.raises(ValueError, match="validation rows"):
        decision.fit_for_bundle(bundle, rows.iloc[:0], device="cpu")


def test_fit_for_bundle_fits_nothing_on_too_few_rows_of_a_label(classifier, tmp_path):
    import shutil

    import pandas as pd

    from labelloop import decision

    bundle = tmp_path / "bundle"
    shutil.copytree(classifier.bundle_dir, bundle)
    raw = classifier.raw_logits(TEXTS[:9])
    target = classifier.labels[int(raw.mean(axis=0).argmin())]
    rows = pd.DataFrame({"text": TEXTS[:9], "label": [target] * 9})  # other labels: none
    record = decision.fit_for_bundle(bundle, rows, device="cpu")
    assert not any(record["offsets"].values()) and "not fitted" in record["skipped"]
    assert record["validation_macro_f1"] == record["validation_macro_f1_before"]
    assert "not fitted" in decision.describe(record)
    fitted = modeling.Classifier(bundle, device="cpu")
    np.testing.assert_allclose(fitted.logits(TEXTS[:9]), classifier.logits(TEXTS[:9]), atol=1e-6)
