"""benchmarks/training.py's --run keys: where each goes, and the check before any run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from labelloop.settings import load_settings

_spec = importlib.util.spec_from_file_location(
    "bench_training", Path(__file__).resolve().parents[2] / "benchmarks" / "training.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_run_keys_go_to_training_model_or_dataset():
    name, train, other = bench.parse_run(
        "wb:weight_column=confidence,missing_weight=1.0,min_weight=0.5,validation_fraction=0.1,"
        "decision_bias=macro_f1,label_smoothing=0.1,max_length=128")
    assert name == "wb"
    assert train == {"decision_bias": "macro_f1", "label_smoothing": 0.1}
    assert other == {"weight_column": "confidence", "missing_weight": 1.0, "min_weight": 0.5,
                     "validation_fraction": 0.1, "max_length": 128}


def test_runs_are_checked_before_the_first_one():
    settings = load_settings(None, environ={})
    specs = ["default:", "full/w:weight_column=confidence,missing_weight=1.0",
             "b:validation_fraction=0.1,decision_bias=macro_f1"]
    assert bench.check_runs(specs, settings) == ("confidence", 1.0)
    assert bench.check_runs(["default:"], settings) == (None, None)
    for bad, says in [("b:decision_bias=macro_f1", "decision_bias macro_f1 fits its offsets"),
                      ("t:decision_bais=macro_f1", "unknown key 'training.decision_bais'"),
                      ("m:min_weight=0.5", "min_weight needs dataset.weight_column")]:
        with pytest.raises(SystemExit, match=says):
            bench.check_runs(["default:", bad], settings)
    with pytest.raises(SystemExit, match="one weight_column and missing_weight per call"):
        bench.check_runs(["a:weight_column=confidence,missing_weight=1",
                          "b:weight_column=confidence,missing_weight=0.5"], settings)
