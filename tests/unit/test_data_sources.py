"""Sources, label mapping, cleaning, duplicates and splits of labelloop.data / labelloop.sources."""

from __future__ import annotations

import json
import sqlite3
import zipfile

import pandas as pd
import pytest

from labelloop import data
from labelloop.cleaning import Cleaning
from labelloop.settings import ConfigError, DatasetSettings, Settings, load_settings
from labelloop.tasks import ClassificationTask

TASK = ClassificationTask(name="t", labels=("negative", "neutral", "positive"))
ROWS = [("great film", "positive"), ("awful film", "negative"), ("it was a film", "neutral"),
        ("loved it", "positive"), ("hated it", "negative"), ("fine", "neutral")]


def frame(rows=ROWS):
    return pd.DataFrame(rows, columns=["text", "sentiment"])


def ds(**kw) -> DatasetSettings:
    return DatasetSettings(**{"encoding": "utf-8", **kw})


def splits(**kw):
    return data.load_splits(ds(**kw), TASK)


# -- sources -------------------------------------------------------------------------------
def test_list_and_glob_of_files_are_read_in_order(tmp_path):
    frame(ROWS[:3]).to_csv(tmp_path / "a.csv", index=False)
    frame(ROWS[3:]).to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    listed = data.load_labelled(ds(path=[str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl")]), TASK)
    assert list(listed["text"]) == [t for t, _ in ROWS]
    frame(ROWS[3:]).to_csv(tmp_path / "c.csv", index=False)
    globbed = data.load_labelled(ds(path=str(tmp_path / "*.csv")), TASK)
    assert sorted(globbed["text"]) == sorted(t for t, _ in ROWS)
    with pytest.raises(data.DataError, match="no file matches"):
        data.load_labelled(ds(path=str(tmp_path / "*.tsv")), TASK)


def test_zip_members(tmp_path):
    archive = tmp_path / "reviews.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("data/train.csv", frame(ROWS[:4]).to_csv(index=False))
        z.writestr("data/test.csv", frame(ROWS[4:]).to_csv(index=False))
        z.writestr("README", "not data")
    got = splits(train={"path": str(archive), "member": "train.csv"},
                 test={"path": str(archive), "member": "data/test.csv"})
    assert list(got.train["text"]) == [t for t, _ in ROWS[:4]]
    assert list(got.test["text"]) == [t for t, _ in ROWS[4:]]
    assert {s.kind for s in got.sources} == {"zip"}
    both = data.load_labelled(ds(path=str(archive)), TASK)  # every data file inside
    assert len(both) == len(ROWS)
    with pytest.raises(data.DataError, match=r"no member 'dev.csv'.*data/train.csv"):
        data.load_labelled(ds(path=str(archive), member="dev.csv"), TASK)
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(data.DataError, match="not a readable zip"):
        data.load_labelled(ds(path=str(tmp_path / "bad.zip")), TASK)


def test_huggingface_save_to_disk_directory(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(frame(ROWS[:4])),
        "test": datasets.Dataset.from_pandas(frame(ROWS[4:])),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    got = splits(train={"path": str(tmp_path / "hf"), "split": "train"},
                 test={"path": str(tmp_path / "hf"), "split": "test"})
    assert len(got.train) == 4 and len(got.test) == 2 and got.sources[0].kind == "hf"
    with pytest.raises(data.DataError, match=r"holds the splits \['train', 'test'\]"):
        data.load_labelled(ds(path=str(tmp_path / "hf")), TASK)


def test_sqlite_query_and_table(tmp_path):
    db = tmp_path / "reviews.db"
    with sqlite3.connect(db) as conn:
        frame().to_sql("reviews", conn, index=False)
    url = f"sqlite:///{db}"
    got = splits(train={"url": url, "query": "SELECT * FROM reviews WHERE text != 'fine'"},
                 test={"url": url, "query": "SELECT text, sentiment FROM reviews WHERE text = 'fine'"})
    assert len(got.train) == 5 and list(got.test["text"]) == ["fine"]
    assert got.sources[0].kind == "sql" and "reviews" in got.sources[0].uri
    table = data.load_labelled(ds(train={"url": url, "table": "reviews"}), TASK)
    assert len(table) == len(ROWS)
    with pytest.raises(data.DataError, match="has no table 'nope'"):
        data.load_labelled(ds(train={"url": url, "table": "nope"}), TASK)
    with pytest.raises(data.DataError, match="query on .* failed: no such column: nope"):
        data.load_labelled(ds(train={"url": url, "query": "SELECT nope FROM reviews"}), TASK)
    with pytest.raises(data.DataError, match="cannot connect to the SQL source .*unable to open"):
        data.load_labelled(ds(train={"url": f"sqlite:///{tmp_path}/no/such/dir/x.db",
                                     "query": "SELECT 1"}), TASK)
    with pytest.raises(data.DataError, match="not a valid SQLAlchemy URL"):
        data.load_labelled(ds(train={"url": "not a url", "query": "SELECT 1"}), TASK)


def test_source_settings_forms_and_mistakes():
    s = load_settings(overrides={"dataset": {"train": "a.csv", "test": ["b.csv", "c.csv"]}},
                      environ={})
    assert s.dataset.path is None and s.dataset.train.path == "a.csv"
    assert s.dataset.test.path == ["b.csv", "c.csv"]
    with pytest.raises(ConfigError, match="exactly one of `query` or `table`"):
        load_settings(overrides={"dataset": {"test": {"url": "sqlite://"}}}, environ={})
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        load_settings(overrides={"dataset": {"test": {"path": "x", "url": "sqlite://",
                                                      "table": "t"}}}, environ={})
    with pytest.raises(ConfigError, match="dataset.path or dataset.train, not both"):
        load_settings(overrides={"dataset": {"path": "x.csv", "train": "y.csv"}}, environ={})


def test_missing_and_unreadable_files_are_named(tmp_path):
    frame().to_csv(tmp_path / "a.csv", index=False)
    # the error says which source is missing: with a train and a test file, which one
    with pytest.raises(data.DataError, match="test source file not found: .*nope.csv"):
        splits(path=str(tmp_path / "a.csv"), test=str(tmp_path / "nope.csv"))
    with pytest.raises(data.DataError, match="^dataset file not found: .*nope.csv"):
        splits(path=str(tmp_path / "nope.csv"), test=str(tmp_path / "a.csv"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(data.DataError, match="could not read .*broken.parquet as parquet"):
        data.load_labelled(ds(path=str(tmp_path / "broken.parquet")), TASK)
    with pytest.raises(data.DataError, match="is a directory"):
        data.load_labelled(ds(path=str(tmp_path)), TASK)


# -- nulls and empties: the same in every format -------------------------------------------
@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_null_and_empty_texts_and_labels_are_dropped_and_counted(tmp_path, suffix):
    df = pd.DataFrame({"text": ["good", None, "  ", "bad", "meh", "ok"],
                       "sentiment": ["positive", "negative", "neutral", None, "neutral", ""]})
    path = tmp_path / f"d.{suffix}"
    {"csv": lambda: df.to_csv(path, index=False),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(path)}[suffix]()
    from labelloop.sources import read_source

    raw, _ = read_source(ds(path=str(path)).train_source(), "train", "utf-8")
    _, report = data.prepare(raw, ds(), TASK, str(path))
    assert report.rows_read == 6 and report.kept == 2
    assert report.null_text + report.empty_text == 2 and report.null_label == 2
    assert "2 without text" in report.summary() and "2 without label" in report.summary()


def test_a_null_text_is_a_report_not_a_crash(tmp_path):
    """The `text_bucket` crash ('float' object has no attribute 'encode') of a null JSONL text."""
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"text": None, "sentiment": "positive"}, {"text": "fine", "sentiment": "neutral"},
        {"text": 42, "sentiment": "positive"}, {"text": "bad", "sentiment": "negative"}]))
    df = data.load_labelled(ds(path=str(path)), TASK)
    assert list(df["text"]) == ["fine", "42", "bad"]
    with pytest.raises(data.DataError, match="expected a text"):
        data.text_bucket(float("nan"))


# -- labels ----------------------------------------------------------------------------------
def test_label_map_integers_and_strings_unmapped_counted(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"review": f"review {i}", "stars": s} for i, s in
            enumerate([1, 5, 3, 1.0, "5", 2, 4, None, 5, 1])]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    s = Settings.model_validate({"dataset": {
        "path": str(path), "text_column": "review", "label_column": "stars", "encoding": "utf-8",
        "label_map": {1: "negative", "5": "positive", 3: "neutral", 2: None}}})
    assert s.dataset.label_map == {"1": "negative", "5": "positive", "3": "neutral", "2": None}
    df, report = data.prepare(pd.read_json(path, lines=True, dtype=False), s.dataset, TASK, "r")
    assert dict(zip(df["text"], df["label"])) == {
        "review 0": "negative", "review 1": "positive", "review 2": "neutral",
        "review 3": "negative", "review 4": "positive", "review 8": "positive",
        "review 9": "negative"}
    assert report.unmapped_label == 2 and report.unmapped_values == {"2": 1, "4": 1}
    assert report.null_label == 1
    assert "2 with a label the map drops" in report.summary()


def test_integer_labels_need_no_quotes_in_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task:\n  labels: [1, 2, 3]\n  display_names: {1: bad, 3: good}\n")
    s = load_settings(cfg, environ={})
    assert s.task.labels == ["1", "2", "3"] and s.task.display_names == {"1": "bad", "3": "good"}
    from labelloop.tasks import task_from_settings

    task = task_from_settings(s)
    assert task.display_name("1") == "bad" and task.display_name("2") == "2"
    df = pd.DataFrame({"text": ["a", "b", "c"], "sentiment": [1, 2.0, 3]})
    got, _ = data.prepare(df, s.dataset, task, "ints")
    assert list(got["label"]) == ["1", "2", "3"]


def test_display_names_reach_the_label_config():
    from annotation.config import check_label_config, classification_config

    task = ClassificationTask(name="t", labels=("negative", "positive"),
                              display_names=(("negative", "Bad <1-2 stars>"),))
    xml = classification_config(task)
    assert 'value="negative" html="Bad &amp;lt;1-2 stars&amp;gt;"' in xml
    assert '<Choice value="positive"/>' in xml
    check_label_config(xml, task)  # values stay the labels
    from labelloop.tasks import task_from_dict

    assert task_from_dict(task.to_dict()) == task


def test_bad_label_map_is_a_config_error():
    with pytest.raises(ConfigError, match=r"maps to \['great'\]"):
        load_settings(overrides={"dataset": {"label_map": {5: "great"}}}, environ={})
    with pytest.raises(ConfigError, match="display_names for"):
        load_settings(overrides={"task": {"display_names": {"nope": "x"}}}, environ={})


def test_mapping_that_leaves_nothing_or_one_class(tmp_path):
    frame().to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(data.DataError, match="no usable rows .* label the map drops"):
        splits(path=str(tmp_path / "d.csv"), label_map={"other": "positive"})
    frame(ROWS * 1).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"text": [f"good {i}" for i in range(9)] + ["bad"],
                  "sentiment": ["positive"] * 9 + ["negative"]}).to_csv(tmp_path / "t.csv",
                                                                        index=False)
    with pytest.raises(data.DataError, match=r"only the class \['positive'\] is left.*label_map"):
        splits(path=str(tmp_path / "t.csv"), test=str(tmp_path / "test.csv"),
               label_map={"positive": "positive", "neutral": "neutral"})


@pytest.mark.parametrize("rule,expected,conflicts", [
    ("first", {"x": "positive", "y": "neutral"}, 1),
    ("last", {"x": "negative", "y": "neutral"}, 1),
    ("majority", {"x": "negative", "y": "neutral"}, 1),
    ("drop", {"y": "neutral"}, 1),
])
def test_conflicting_duplicates(rule, expected, conflicts):
    df = pd.DataFrame({"text": ["x", "x", "y", "x", "y"],
                       "sentiment": ["positive", "negative", "neutral", "negative", "neutral"]})
    got, report = data.prepare(df, ds(duplicates=rule), TASK, "dups")
    assert dict(zip(got["text"], got["label"])) == expected
    assert report.conflicts == conflicts
    assert "1 texts with conflicting labels" in report.summary(rule)


def test_majority_tie_goes_to_the_first_seen():
    df = pd.DataFrame({"text": ["x", "x"], "sentiment": ["neutral", "positive"]})
    got, _ = data.prepare(df, ds(duplicates="majority"), TASK, "tie")
    assert list(got["label"]) == ["neutral"]


# -- test sources ------------------------------------------------------------------------------
def test_test_source_replaces_the_hash_split_and_overlap_is_an_error(tmp_path):
    frame(ROWS[:4]).to_csv(tmp_path / "train.csv", index=False)
    frame(ROWS[4:]).to_csv(tmp_path / "test.csv", index=False)
    got = splits(path=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"))
    assert len(got.train) == 4 and len(got.test) == 2 and got.test_from_source
    assert [s.role for s in got.sources] == ["train", "test"]
    frame(ROWS[3:]).to_csv(tmp_path / "test2.csv", index=False)
    with pytest.raises(data.DataError, match="shares 1 texts with the training source"):
        splits(path=str(tmp_path / "train.csv"), test=str(tmp_path / "test2.csv"))
    dropped = splits(path=str(tmp_path / "train.csv"), test=str(tmp_path / "test2.csv"),
                     test_overlap="drop")
    assert "loved it" not in set(dropped.train["text"]) and len(dropped.train) == 3
    frame(ROWS[:1] + ROWS[2:3]).to_csv(tmp_path / "val.csv", index=False)
    with_val = splits(path=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"),
                      validation=str(tmp_path / "val.csv"))
    assert len(with_val.validation) == 2 and len(with_val.train) == 2


def test_source_digest_follows_the_bytes(tmp_path):
    path = tmp_path / "d.csv"
    frame().to_csv(path, index=False)
    first = splits(path=str(path)).source_digest
    assert splits(path=str(path)).source_digest == first
    path.write_text(path.read_text() + "one more,neutral\n")
    assert splits(path=str(path)).source_digest != first


# -- cleaning ------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,raw,clean", [
    ({"html_entities": True}, "I&#039;m &amp;amp; &lt;b&gt;", "I'm & <b>"),
    ({"html_entities": False}, "I&#039;m", "I&#039;m"),
    ({"strip_quotes": True}, '  "a quoted review"  ', "a quoted review"),
    ({"strip_quotes": True}, '""twice""', "twice"),
    ({"strip_quotes": True}, '"left" and "right"', '"left" and "right"'),
    ({"strip_quotes": True}, "\u201ccurly\u201d", "curly"),
    ({"whitespace": "collapse"}, " a \t b\n\nc ", "a b c"),
    ({"whitespace": "strip"}, " a  b ", "a  b"),
    ({"whitespace": "keep"}, " a ", " a "),
    ({"unicode_form": "NFKC"}, "\ufb01ne \u2460", "fine 1"),
    ({"unicode_form": "NFC"}, "cafe\u0301", "caf\u00e9"),
    ({"html_entities": True, "whitespace": "collapse"}, "a&nbsp;&nbsp;b", "a b"),
    ({"urls": "token"}, "late again http://t.co/8Hh0c63TIe and www.x.com/a?b=1",
     "late again URL and URL"),
    ({"urls": "remove", "whitespace": "collapse"}, "late http://t.co/x again HTTPS://a.b",
     "late again"),
    ({"urls": "keep"}, "see http://t.co/x", "see http://t.co/x"),
    ({"urls": "token", "strip_quotes": True}, '"late (http://t.co/x), see www.a.io/b?c=1."',
     "late (URL), see URL."),
    ({"mentions": "token"}, "@united thanks @Delta_2! mail me@home.com or @@x",
     "@user thanks @user! mail me@home.com or @@x"),
    ({"mentions": "keep", "urls": "token"}, "@united http://t.co/x", "@united URL"),
])
def test_cleaning_options_and_idempotence(cfg, raw, clean):
    cleaning = Cleaning(**{"whitespace": "keep", **cfg})
    assert cleaning(raw) == clean
    assert cleaning(cleaning(raw)) == cleaning(raw)
    assert Cleaning.from_meta(cleaning.to_dict()) == cleaning


def test_cleaning_applies_before_split_and_dedupe(tmp_path):
    df = pd.DataFrame({"text": ["I&#039;m happy", "I'm happy", "&quot;ok&quot;"],
                       "sentiment": ["positive", "positive", "neutral"]})
    got, report = data.prepare(df, ds(cleaning={"html_entities": True, "strip_quotes": True}),
                               TASK, "c")
    assert list(got["text"]) == ["I'm happy", "ok"]
    assert report.changed_by_cleaning == 2 and report.duplicates == 1
    assert Cleaning.from_meta(None).is_identity  # older bundles: nothing applied


def test_default_corpus_split_is_unchanged_by_the_new_data_layer():
    """The frozen split of the default corpus: the digests every earlier version was scored on."""
    s = load_settings(environ={})
    got = data.load_splits(s.dataset, ClassificationTask("s", tuple(s.task.labels)))
    assert (len(got.train), len(got.test)) == (29863, 7380)
    assert (data.digest(got.train), data.digest(got.test)) == ("cf591c627978bbe0",
                                                               "e41183effb463da6")


def test_a_row_without_text_is_not_judged_by_its_label():
    """A broken CSV line's continuation has text in the label column and none in the text one:
    it is a row without text (counted), not an unknown label (which would stop training)."""
    df = pd.DataFrame({"text": ["good", ""], "sentiment": ["positive", "http://t.co/x"]})
    got, report = data.prepare(df, ds(), TASK, "broken")
    assert list(got["text"]) == ["good"] and report.empty_text == 1


def test_a_package_source_is_named_as_written_and_recorded_by_its_path():
    """Summaries and errors name a `package:` source as the config does, not by its long
    site-packages path; the model's record keeps the path it was read from."""
    from pathlib import Path

    from labelloop.settings import DEFAULT_DATASET
    from labelloop.sources import read_source

    raw, info = read_source(ds(path=DEFAULT_DATASET).train_source(), "train", "utf-8")
    assert info.name == DEFAULT_DATASET and "site-packages" not in info.name
    assert Path(info.to_dict()["uri"]).is_file() and len(raw) == info.rows
    _, plain = read_source(ds(path=str(Path(info.uri))).train_source(), "train", "utf-8")
    assert plain.name == plain.uri == info.uri and plain.digest == info.digest
