"""`labelloop labels export|agreement`: formats, provenance, per-task agreement, atomic write,
bad input (one clear CLI line, nothing written)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from annotation.agreement import (
    annotator_agreement_summary, krippendorff_alpha_nominal, task_agreement,
)
from labelloop import cli, labels_export
from labelloop.labels_export import LabelsExportError, export_labels
from labelloop.labels_store import LabelRecord, LabelsStore
from labelloop.settings import Settings


def rec(aid, task, label, annotator, text=None, **kw):
    kw.setdefault("updated_at", f"2026-01-01T00:00:{int(aid):02d}Z")
    return LabelRecord(source="label-studio", project="4", annotation_id=str(aid),
                       task_id=str(task), text=text or f"text of task {task}", label=label,
                       annotator=str(annotator), created_at="2026-01-01T00:00:00Z", via="pull",
                       **kw)


@pytest.fixture
def settings(tmp_path):
    s = Settings(data_dir=str(tmp_path / "data"))
    with LabelsStore(s.labels_path) as store:
        store.upsert_many([
            # task 1: three annotators, two say negative
            rec(1, 1, "negative", 11, model_version="3", shown_label="positive", shown_score=0.51),
            rec(2, 1, "negative", 12, model_version="3", shown_label="positive", shown_score=0.51),
            rec(3, 1, "neutral", 13, model_version="3", shown_label="positive", shown_score=0.51),
            # task 2: two annotators agree; the text has a comma, a quote and a newline
            rec(4, 2, "positive", 11, text='great, "really"\nsecond line', model_version="3",
                shown_label="positive", shown_score=0.9),
            rec(5, 2, "positive", 12, text='great, "really"\nsecond line'),
            # task 3: one annotation, no prediction shown
            rec(6, 3, "neutral", 11),
        ])
        store.upsert(LabelRecord.invalid("bad label: 'sarcastic'", source="label-studio",
                                         project="4", annotation_id="7", task_id="9",
                                         text="odd", updated_at="2026-01-01T00:01:00Z"))
        store.upsert(rec(8, 5, "neutral", 14))
        store.delete("label-studio", "4", "8")
    return s


def test_csv_has_provenance_and_task_agreement(settings, tmp_path):
    out = tmp_path / "labels.csv"
    report = export_labels(settings, out)
    assert report["format"] == "csv" and report["rows"] == 6 and report["tasks"] == 3
    assert report["tasks_with_several_annotations"] == 2
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == labels_export.COLUMNS
    by_id = {r["annotation_id"]: r for r in rows}
    assert set(by_id) == {"1", "2", "3", "4", "5", "6"}  # no invalid, no deleted row
    a1 = by_id["1"]
    assert (a1["source"], a1["project"], a1["task_id"], a1["annotator"]) == \
        ("label-studio", "4", "1", "11")
    assert (a1["model_version"], a1["shown_label"], float(a1["shown_score"]), a1["changed"]) == \
        ("3", "positive", 0.51, "1")
    assert a1["created_at"] == "2026-01-01T00:00:00Z" and a1["updated_at"] == "2026-01-01T00:00:01Z"
    assert (a1["task_annotations"], a1["task_majority_label"]) == ("3", "negative")
    assert float(a1["task_agreement"]) == pytest.approx(2 / 3)
    assert by_id["4"]["text"] == 'great, "really"\nsecond line'  # round-trips through quoting
    assert float(by_id["4"]["task_agreement"]) == 1.0
    assert by_id["6"]["model_version"] == "" and by_id["6"]["task_annotations"] == "1"


def test_jsonl_types_and_all_statuses(settings, tmp_path):
    out = tmp_path / "labels.jsonl"
    report = export_labels(settings, out, status="all")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert report["rows"] == len(lines) == 7
    rows = [json.loads(line) for line in lines]
    bad = [r for r in rows if r["status"] == "invalid"]
    assert len(bad) == 1 and bad[0]["reason"] == "bad label: 'sarcastic'" and bad[0]["label"] is None
    assert bad[0]["task_annotations"] is None  # invalid rows take no part in agreement
    a6 = next(r for r in rows if r["annotation_id"] == "6")
    assert a6["shown_score"] is None and a6["model_version"] is None  # null, never NaN
    a1 = next(r for r in rows if r["annotation_id"] == "1")
    assert a1["shown_score"] == 0.51 and a1["task_annotations"] == 3 and a1["changed"] == 1


def test_format_flag_wins_over_suffix_and_project_filter(settings, tmp_path):
    out = tmp_path / "labels.txt"
    export_labels(settings, out, fmt="jsonl")
    assert json.loads(out.read_text().splitlines()[0])["source"] == "label-studio"
    other = tmp_path / "other.csv"
    assert export_labels(settings, other, project="99")["rows"] == 0
    assert other.read_text().strip() == ",".join(labels_export.COLUMNS)  # header only


def test_write_is_atomic_on_error(settings, tmp_path, monkeypatch):
    out = tmp_path / "labels.csv"
    out.write_text("the previous export\n")

    def broken(df, f):
        f.write("half a file")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(labels_export.WRITERS, "csv", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_labels(settings, out)
    assert out.read_text() == "the previous export\n"
    assert sorted(os.listdir(tmp_path)) == ["data", "labels.csv"]  # no temporary file left


@pytest.mark.parametrize("name, fmt, match", [
    ("labels.xlsx", None, "cannot tell the format"),
    ("labels.csv", "parquet", "unknown format"),
    ("missing-dir/labels.csv", None, "does not exist"),
    (".", None, "is a directory"),
])
def test_bad_format_or_path_writes_nothing(settings, tmp_path, name, fmt, match):
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(LabelsExportError, match=match):
        export_labels(settings, tmp_path / name, fmt=fmt)
    assert sorted(os.listdir(tmp_path)) == before


def test_no_store_is_an_error_and_creates_nothing(tmp_path):
    s = Settings(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(LabelsExportError, match="no labels store"):
        export_labels(s, tmp_path / "x.csv")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "x.csv").exists()


def _config(tmp_path, settings):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data_dir: {settings.data_dir}\n")
    return str(cfg)


def test_cli_export_and_bad_input_is_one_line(settings, tmp_path, capsys):
    cfg = _config(tmp_path, settings)
    assert cli.main(["labels", "export", "-c", cfg, "-o", str(tmp_path / "l.jsonl")]) == 0
    assert "exported 6 label(s) on 3 task(s) (2 with several annotations)" in capsys.readouterr().out
    for argv, match in [
        (["-o", str(tmp_path / "l.xlsx")], "cannot tell the format"),
        (["-o", str(tmp_path / "no" / "l.csv")], "does not exist"),
        ([], "needs --output"),
    ]:
        assert cli.main(["labels", "export", "-c", cfg, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("labelloop labels: error: ") and match in err[0]
    assert not (tmp_path / "l.xlsx").exists()


def test_cli_agreement_summary(settings, tmp_path, capsys):
    assert cli.main(["labels", "agreement", "-c", _config(tmp_path, settings)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks_with_several_annotations"] == 2 and report["disagreeing_tasks"] == 1
    # pairs: task 1 has 3 pairs, 1 agreeing; task 2 has 1 pair, agreeing -> 2 of 4
    assert report["pairwise_agreement"] == 0.5
    assert report["disagreements"][0]["task_id"] == "1"
    assert report["disagreements"][0]["labels"] == "negative:2;neutral:1"


def test_task_agreement_majority_ties_and_text_key():
    import pandas as pd

    rows = pd.DataFrame([
        {"source": "s", "project": "1", "task_id": None, "text": "t", "label": "b", "annotator": "1"},
        {"source": "s", "project": "1", "task_id": None, "text": "t", "label": "a", "annotator": "2"},
    ])
    table = task_agreement(rows)
    assert len(table) == 1 and table.iloc[0]["task_id"] == "text:t"
    assert table.iloc[0]["majority_label"] == "a" and table.iloc[0]["task_agreement"] == 0.5
    empty = annotator_agreement_summary(rows.iloc[:0])
    assert empty["tasks_with_several_annotations"] == 0 and empty["krippendorff_alpha"] is None


def test_krippendorff_alpha_nominal():
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == 1.0
    # one agreeing, one split unit: pairable values n=4 (a:3, b:1), observed 2, expected 6
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"]]) == pytest.approx(1 - 3 * 2 / 6)
    assert krippendorff_alpha_nominal([["a", "b"], ["b", "a"]]) < 0  # systematic disagreement
    assert krippendorff_alpha_nominal([["a", "a"], ["a"]]) is None  # no disagreement possible
    assert krippendorff_alpha_nominal([["a"]]) is None


def test_generation_answers_export_their_kind_and_columns_with_the_rating(tmp_path):
    from labelloop.generation.answers import preference_record, response_record

    s = Settings(data_dir=str(tmp_path / "gen"))
    base = {"source": "label-studio", "project": "6", "annotator": "ann@x",
            "updated_at": "2026-01-01T00:00:00Z", "via": "sync"}
    with LabelsStore(s.labels_path) as store:
        store.upsert_many([
            response_record("Hi?", "Hello there.", shown="Hello.", rating=4, annotation_id="1",
                            task_id="1", **base),
            response_record("Bye?", "Bye.", shown="Bye.", annotation_id="2", task_id="2", **base),
            preference_record("Why?", "Because.", "No.", "b", version_a="3", version_b="2",
                              annotation_id="3", task_id="3", **base),
        ])
    csv_out, jsonl_out = tmp_path / "gen.csv", tmp_path / "gen.jsonl"
    export_labels(s, csv_out)
    export_labels(s, jsonl_out)
    with open(csv_out, newline="", encoding="utf-8") as f:
        by_id = {r["annotation_id"]: r for r in csv.DictReader(f)}
    assert (by_id["1"]["kind"], by_id["1"]["rating"], by_id["1"]["changed"]) == \
        ("response", "4", "1")  # a whole number, not "4.0"
    assert 0 < float(by_id["1"]["edit_distance"]) < 1
    assert by_id["2"]["rating"] == "" and float(by_id["2"]["edit_distance"]) == 0.0
    assert (by_id["3"]["kind"], by_id["3"]["choice"], by_id["3"]["label"], by_id["3"]["rejected"],
            by_id["3"]["chosen_version"], by_id["3"]["rejected_version"]) == \
        ("preference", "b", "No.", "Because.", "2", "3")
    rows = {r["annotation_id"]: r for r in map(json.loads, jsonl_out.read_text().splitlines())}
    assert rows["1"]["rating"] == 4 and rows["2"]["rating"] is None
