"""Classifier inference split in two (encode -> logits_from_ids), and CUDA-graph shape buckets."""

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
    finally:
        classifier.graphs = None
