"""The real `training` pipeline on a user's dataset: a train CSV and a test JSONL with a rating
column mapped to labels, HTML entities, wrapping quotes, nulls, head+tail truncation, per-row
weights from an agreement column (some cells empty, the lightest rows dropped) and a decision
bias fitted on the validation source. Checks what the model records (sources, digests,
cleaning, weights, offsets) in the bundle, the registry, MLflow's dataset inputs and
`labelloop status`, that the test figures are the offset model's, and that serving reads texts
as training did."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from labelloop import registry
from labelloop.settings import load_settings, resolve_path

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
STARS = {"negative": 1, "neutral": 3, "positive": 5}


def review(text: str, i: int) -> str:
    text = text.replace("'", "&#039;").replace("&", "&amp;", 1) if i % 2 else text
    return f'"{text}"' if i % 3 == 0 else text


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-data")
    corpus = pd.read_csv(resolve_path(load_settings(environ={}).dataset.path), encoding="latin-1")
    rows = corpus.drop_duplicates("text").sample(420, random_state=5).reset_index(drop=True)
    rows["body"] = [review(t, i) for i, t in enumerate(rows["text"])]
    rows["rating"] = rows["sentiment"].map(STARS)
    rows.loc[rows.index % 17 == 0, "rating"] = 2  # a rating the map leaves out
    train, valid, test = rows.iloc[:280], rows.iloc[280:320], rows.iloc[320:]
    train = train.assign(agreement=[("" if i % 11 == 0 else f"{0.3 + (i % 8) / 10:.2f}")
                                    for i in range(len(train))])
    train[["body", "rating", "agreement"]].to_csv(root / "train.csv", index=False)
    valid[["body", "rating"]].to_csv(root / "valid.csv", index=False)
    test = test[["body", "rating"]].astype(object)
    test.iloc[0, 0] = None  # a null text in JSONL: dropped and counted, not a crash
    test.to_json(root / "test.jsonl", orient="records", lines=True)
    cfg = {
        "data_dir": str(root / "data"),
        "dataset": {"path": str(root / "train.csv"), "test": str(root / "test.jsonl"),
                    "validation": str(root / "valid.csv"),
                    "encoding": "utf-8", "text_column": "body", "label_column": "rating",
                    "label_map": {1: "negative", 3: "neutral", 5: "positive"},
                    "weight_column": "agreement", "missing_weight": 1.0, "min_weight": 0.35,
                    "cleaning": {"html_entities": True, "strip_quotes": True,
                                 "whitespace": "collapse", "unicode_form": "NFC",
                                 "urls": "token"}},
        "model": {"max_length": 32, "truncation": "head_tail"},
        "training": {"method": "full", "learning_rate": 1e-4, "batch_size": 16, "max_steps": 12,
                     "validation_every_steps": 4, "decision_bias": "macro_f1"},
        "evaluation": {"sample_predictions": 3},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("LABELLOOP")}
    env.update({"ZENML_CONFIG_PATH": str(root / "zenml"), "PYTHONUNBUFFERED": "1"})
    return root, env


def cli(root, env, *args, config=None):
    return subprocess.run(
        [sys.executable, "-m", "labelloop.cli", *args, "-c", str(config or root / "config.yaml")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_overlapping_test_source_fails_before_training(workspace):
    root, env = workspace
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    pd.read_csv(root / "train.csv").iloc[:30].to_json(root / "overlap.jsonl", orient="records",
                                                      lines=True)
    cfg["dataset"]["test"] = str(root / "overlap.jsonl")
    (root / "overlap.yaml").write_text(yaml.safe_dump(cfg))
    r = cli(root, env, "train", config=root / "overlap.yaml")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "shares" in lines[0] and "test_overlap" in lines[0]
    assert not (root / "data" / "mlflow.db").exists()  # the registry was never touched


def test_train_on_a_mapped_cleaned_two_file_dataset(workspace):
    root, env = workspace
    r = cli(root, env, "train")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "with a label the map drops" in out and "1 without text (1 null" in out
    assert "test by the test source" in out and "HTML entities decoded" in out
    assert "validation macro-F1 on" in out and "kept the weights of step" in out
    # weights: read from the training source only (the validation and test sources have none)
    assert "training rows with agreement < 0.35 (dataset.min_weight" in out
    assert "weights: agreement on" in out
    assert "decision bias  macro_f1: not fitted: " in out  # 40 validation rows: too few

    s = load_settings(root / "config.yaml", environ={})
    champion = registry.get_champion(s)
    assert champion is not None
    meta = json.loads((registry.fetch_bundle(s, champion.version) / "labelloop.json").read_text())
    sha = {name: hashlib.sha256((root / name).read_bytes()).hexdigest()
           for name in ("train.csv", "test.jsonl", "valid.csv")}
    assert [(x["role"], x["digest"]) for x in meta["sources"]] == [
        ("train", sha["train.csv"]), ("test", sha["test.jsonl"]),
        ("validation", sha["valid.csv"])]
    # The validation rows were scored every 4 steps; the best evaluation's weights were kept.
    curve = meta["validation"]["curve"]
    assert [e["step"] for e in curve] == [4, 8, 12]
    assert meta["validation"]["kept_step"] == max(curve, key=lambda e: e["macro_f1"])["step"]
    assert meta["cleaning"] == {"html_entities": True, "strip_quotes": True,
                                "whitespace": "collapse", "unicode_form": "NFC",
                                "urls": "token", "mentions": "keep"}
    assert meta["truncation"] == "head_tail" and meta["human_digest"] == "none"
    assert champion.tags["labelloop.source_digest"] == meta["source_digest"]
    assert champion.tags["test_digest"] == meta["test_digest"]

    assert meta["sample_weights"]["column"] == "agreement"
    assert meta["sample_weights"]["min"] >= 0.35 and meta["sample_weights"]["max"] == 1.0
    bias = meta["decision_bias"]
    assert bias["rule"] == "macro_f1" and bias["validation_rows"] == meta["validation"]["rows"]
    assert set(bias["offsets"]) == {"negative", "neutral", "positive"}
    # 40 validation rows hold under 30 of every label: no offsets are fitted, and it says why
    assert "not fitted" in bias["skipped"] and not any(bias["offsets"].values())

    # MLflow dataset inputs: the training and test rows, each with its source and digest
    run = mlflow.tracking.MlflowClient(s.tracking_uri).get_run(champion.run_id)
    # the kept weights scored again without offsets (what the bias was fitted from), and with
    assert run.data.metrics["decision_bias_validation_macro_f1_before"] == pytest.approx(
        max(e["macro_f1"] for e in curve), abs=1e-6)
    assert run.data.metrics["validation_macro_f1"] == pytest.approx(
        bias["validation_macro_f1"], abs=1e-6)
    assert bias["validation_macro_f1"] >= bias["validation_macro_f1_before"]
    params = run.data.params
    assert (params["weight_column"], params["min_weight"], params["missing_weight"],
            params["decision_bias"], params["test_decision_rule"]) == (
        "agreement", "0.35", "1.0", "macro_f1", "macro_f1")
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    assert inputs["train"].dataset.digest == meta["dataset_digest"]
    assert inputs["test"].dataset.digest == meta["test_digest"]
    assert "test.jsonl" in inputs["test"].dataset.source
    tags = {t.key: t.value for t in inputs["test"].tags}
    assert tags["source_digest"] == sha["test.jsonl"][:16]

    status = cli(root, env, "status")
    assert status.returncode == 0 and f"data {meta['source_digest']}" in status.stdout
    assert f"test split {meta['test_digest']}" in status.stdout

    # No train/serve skew: a raw text and its cleaned form get the very same prediction, and
    # the cleaned training texts never held an entity.
    from labelloop.modeling import Classifier

    clf = Classifier(registry.fetch_bundle(s, champion.version), device="cpu")
    # The registered test score is the offset model's score on the unchanged test source.
    from labelloop import data, evaluation
    from labelloop.tasks import task_from_settings

    test_rows = data.load_splits(s.dataset, task_from_settings(s)).test
    assert len(test_rows) == int(meta["test_rows"])
    assert clf.decision_bias is not None or not any(bias["offsets"].values())
    assert evaluation.evaluate_classifier(clf, test_rows).metrics["macro_f1"] == pytest.approx(
        float(champion.tags["test_macro_f1"]), abs=1e-9)
    raw = ['"I&#039;m  not sure &amp; undecided http://t.co/8Hh0c63TIe"', "  It&#039;s  great  "]
    cleaned = ["I'm not sure & undecided URL", "It's great"]
    assert clf.encode(raw) == clf.encode(cleaned)
    assert [p.to_dict() for p in clf.predict(raw)] == [p.to_dict() for p in clf.predict(cleaned)]
