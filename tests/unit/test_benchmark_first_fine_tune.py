"""benchmarks/first_fine_tune.py: the step clock's spans, and the widths experiment."""

from __future__ import annotations

import pandas as pd
import torch

from benchmarks import first_fine_tune as bench
from labelloop import training
from labelloop.settings import ModelSettings


def test_spans_between_the_marks_reached():
    stamps = {1: 10.0, 2: 10.5, 10: 11.0, 50: 13.0, 60: 14.5}
    assert bench.spans(stamps) == {"1-10": 1.0, "10-50": 2.0, "50-60": 1.5}
    assert bench.spans({1: 3.0, 5: 4.0}) == {"1-5": 1.0}


def test_widths_rounded_up_and_capped(monkeypatch):
    def fake(*args, **kwargs):
        return torch.zeros(3, 20, dtype=torch.long), torch.ones(3, 20), torch.tensor([3, 8, 19])

    monkeypatch.setattr(training, "encode_rows", fake)
    bench.round_widths(8)
    _, _, lengths = training.encode_rows(None, pd.DataFrame(), ModelSettings(), "cpu")
    assert lengths.tolist() == [8, 8, 20]
