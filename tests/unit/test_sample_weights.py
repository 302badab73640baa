"""Per-row loss weights from a data column (dataset.weight_column, missing_weight, min_weight):
reading them from every source format, the errors, the frozen split, and the weighted loss."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import torch

from labelloop import baseline, data, training
from labelloop.challenger import training_rows
from labelloop.settings import ConfigError, DatasetSettings, Settings, load_settings
from labelloop.tasks import ClassificationTask

TASK = ClassificationTask(name="t", labels=("negative", "neutral", "positive"))
LABELS = ("negative", "neutral", "positive")


def corpus(n: int = 300) -> pd.DataFrame:
    """n rows with varied agreement: every third row below 0.5."""
    return pd.DataFrame({
        "text": [f"text number {i} about {LABELS[i % 3]} things" for i in range(n)],
        "sentiment": [LABELS[i % 3] for i in range(n)],
        "confidence": [0.34 if i % 3 == 0 else (0.67 if i % 3 == 1 else 1.0)
                       for i in range(n)][::-1],
    })


def ds(**kw) -> DatasetSettings:
    return DatasetSettings(**{"encoding": "utf-8", **kw})


# -- reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "sql"])
def test_weights_are_read_from_every_source_format(tmp_path, fmt):
    df = corpus(30)
    if fmt == "sql":
        db = tmp_path / "d.sqlite"
        with sqlite3.connect(db) as conn:
            df.to_sql("rows", conn, index=False)
        source = {"train": {"url": f"sqlite:///{db}", "table": "rows"}}
    else:
        path = tmp_path / f"d.{fmt}"
        {"csv": lambda: df.to_csv(path, index=False),
         "tsv": lambda: df.to_csv(path, index=False, sep="\t"),
         "jsonl": lambda: df.to_json(path, orient="records", lines=True),
         "parquet": lambda: df.to_parquet(path)}[fmt]()
        source = {"path": str(path)}
    got = data.load_labelled(ds(weight_column="confidence", **source), TASK)
    want = dict(zip(df["text"], df["confidence"]))
    assert got[data.WEIGHT].dtype == float
    assert [want[t] for t in got["text"]] == pytest.approx(list(got[data.WEIGHT]))
    # without the setting the frames are what they always were
    assert list(data.load_labelled(ds(**source), TASK).columns) == ["text", "label"]


def test_bad_weights_are_one_error_naming_the_column(tmp_path):
    path = tmp_path / "d.csv"
    df = corpus(12)
    df.to_csv(path, index=False)
    with pytest.raises(data.DataError, match=r"no column 'agreement' \(dataset.weight_column\)"):
        data.load_splits(ds(path=str(path), weight_column="agreement"), TASK)
    for cell, says in [("high", "not a number"), ("-0.5", "negative"), ("inf", "not a number"),
                       ("", "empty in 1 of 12 rows.*missing_weight")]:
        bad = df.astype({"confidence": str}).copy()
        bad.loc[4, "confidence"] = cell
        bad.to_csv(path, index=False)
        with pytest.raises(data.DataError, match=rf"'confidence'.*{says}") as exc:
            data.load_splits(ds(path=str(path), weight_column="confidence"), TASK)
        assert "data row 5" in str(exc.value)  # (1-based, after the header)
    # empty cells take missing_weight when it is given; a non-number stays an error
    bad = df.astype({"confidence": str}).copy()
    bad.loc[4, "confidence"] = ""
    bad.to_csv(path, index=False)
    got = data.load_labelled(ds(path=str(path), weight_column="confidence",
                                missing_weight=0.9), TASK)
    assert got.set_index("text").loc[df.loc[4, "text"], data.WEIGHT] == 0.9
    # JSONL nulls are empty cells too
    jl = tmp_path / "d.jsonl"
    df.assign(confidence=[None] + list(df["confidence"][1:])).to_json(jl, orient="records",
                                                                     lines=True)
    with pytest.raises(data.DataError, match="empty in 1 of 12"):
        data.load_labelled(ds(path=str(jl), weight_column="confidence"), TASK)
    # every training row at weight 0: nothing to learn from
    df.assign(confidence=0).to_csv(path, index=False)
    with pytest.raises(data.DataError, match="every training row has confidence 0"):
        data.load_splits(ds(path=str(path), weight_column="confidence"), TASK)


def test_settings_refuse_min_or_missing_weight_without_a_column_and_negative_values(tmp_path):
    for extra, says in [({"min_weight": 0.5}, "min_weight needs dataset.weight_column"),
                        ({"missing_weight": 1.0}, "missing_weight needs"),
                        ({"weight_column": "c", "min_weight": -1}, "min_weight")]:
        with pytest.raises(ConfigError, match=says):
            load_settings(None, environ={}, overrides={"dataset": extra})
    with pytest.raises(ConfigError, match="weight_column weights classification rows"):
        load_settings(None, environ={}, overrides={"task": {"type": "generation"},
                                                   "dataset": {"weight_column": "c"}})


# -- the split stays frozen ---------------------------------------------------------------------
def test_min_weight_drops_training_rows_only_and_moves_no_row_between_splits(tmp_path):
    path = tmp_path / "d.csv"
    corpus().to_csv(path, index=False)
    plain = data.load_splits(ds(path=str(path), validation_fraction=0.2), TASK)
    weighted = data.load_splits(ds(path=str(path), validation_fraction=0.2,
                                   weight_column="confidence", min_weight=0.5), TASK)
    # the test split and the validation rows: identical, without a weight column
    pd.testing.assert_frame_equal(weighted.test, plain.test)
    pd.testing.assert_frame_equal(weighted.validation, plain.validation)
    assert data.digest(weighted.test) == data.digest(plain.test)
    # training: the same rows less those below 0.5, none of them new
    light = plain.train["text"].isin(set(corpus().query("confidence < 0.5")["text"]))
    assert light.sum() > 0
    assert list(weighted.train["text"]) == list(plain.train.loc[~light, "text"])
    assert weighted.train[data.WEIGHT].min() >= 0.5
    assert any("dropped" in n and "min_weight" in n for n in weighted.notes)
    # without min_weight every training row is kept, weighted
    kept = data.load_splits(ds(path=str(path), validation_fraction=0.2,
                               weight_column="confidence"), TASK)
    assert list(kept.train["text"]) == list(plain.train["text"])
    assert set(kept.train[data.WEIGHT]) == {0.34, 0.67, 1.0}


def test_human_labels_weigh_one_and_a_warm_start_keeps_replay_weights():
    base = pd.DataFrame({"text": ["a", "b", "c"], "label": ["negative"] * 3,
                         data.WEIGHT: [0.3, 0.6, 0.9]})
    human = pd.DataFrame({"text": ["b", "z"], "label": ["positive", "neutral"]})
    test = pd.DataFrame({"text": ["t"], "label": ["neutral"]})
    merged = data.merge_human_labels(base, human, test).set_index("text")
    assert merged.loc["b", "label"] == "positive" and merged.loc["b", data.WEIGHT] == 1.0
    assert merged.loc["z", data.WEIGHT] == 1.0 and merged.loc["a", data.WEIGHT] == 0.3
    settings = Settings()
    new = human.assign(seq=[5, 6])
    rows = training_rows(settings, "warm", base, test, human, new)
    assert set(rows.columns) == {"text", "label", data.WEIGHT}
    assert rows.set_index("text").loc["a", data.WEIGHT] == 0.3
    assert (rows[rows["text"].isin(["b", "z"])][data.WEIGHT] == 1.0).all()


# -- the loss -----------------------------------------------------------------------------------
def test_row_weighted_loss_is_the_weighted_mean_and_reduces_to_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    cw = torch.tensor([0.5, 1.0, 2.0])
    ones = torch.ones(8)
    for smoothing in (0.0, 0.1):  # all weights 1: exactly the plain (class-weighted) mean
        want = torch.nn.functional.cross_entropy(logits, targets, weight=cw,
                                                 label_smoothing=smoothing)
        got = training.row_weighted_loss(logits, targets, ones, cw, smoothing)
        assert float(got) == pytest.approx(float(want), rel=1e-6)
    rw = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 1.0, 0.25, 3.0])
    per_row = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    got = training.row_weighted_loss(logits, targets, rw)
    assert float(got) == pytest.approx(float((rw * per_row).sum() / rw.sum()), rel=1e-6)
    # with class weights: row x class weight, normalised by the same product
    per_row_cw = torch.nn.functional.cross_entropy(logits, targets, weight=cw, reduction="none")
    got = training.row_weighted_loss(logits, targets, rw, cw)
    want = (rw * per_row_cw).sum() / (rw * cw[targets]).sum()
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    # a weight-0 row does not move the gradient: same loss whatever its logits
    moved = logits.clone()
    moved[1] += 10
    assert float(training.row_weighted_loss(moved, targets, rw)) == pytest.approx(float(
        training.row_weighted_loss(logits, targets, rw)), rel=1e-6)


def test_baseline_takes_the_row_weights():
    """The same text under two labels: the heavier row decides what the baseline predicts."""
    test = pd.DataFrame({"text": ["good"], "label": ["positive"]})

    def rows(w_pos, w_neg):
        return pd.DataFrame({"text": ["good", "good", "bad", "meh"] * 3,
                             "label": ["positive", "negative", "negative", "neutral"] * 3,
                             "weight": [w_pos, w_neg, 1.0, 1.0] * 3})

    assert baseline.fit_and_score(rows(1.0, 1e-3), test, TASK).metrics["accuracy"] == 1.0
    assert baseline.fit_and_score(rows(1e-3, 1.0), test, TASK).metrics["accuracy"] == 0.0


def test_data_parallel_shares_of_a_weighted_batch_average_to_its_weighted_mean():
    """As fine_tune computes it per process: each share's weighted sum over the global batch's
    weight, scaled as rank_share expects; DDP's mean over processes is the global loss."""
    from types import SimpleNamespace

    torch.manual_seed(1)
    logits, targets = torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 2])
    rw, cw = torch.rand(7) + 0.1, torch.tensor([1.0, 2.0, 0.5])
    batch = torch.arange(7)
    want = training.row_weighted_loss(logits, targets, rw, cw)
    for world in (2, 3):
        parts = []
        for rank in range(world):
            acc = SimpleNamespace(num_processes=world, process_index=rank)
            share, scale = training.rank_share(batch, acc)
            loss = training.row_weighted_loss(
                logits[share], targets[share], rw[share], cw,
                denominator=(rw * cw[targets])[batch].sum()) * (len(batch) / len(share))
            parts.append(loss * scale)
        assert float(torch.stack(parts).mean()) == pytest.approx(float(want), rel=1e-6)
