import pandas as pd
import pytest

from labelloop import data
from labelloop.settings import DatasetSettings
from labelloop.tasks import ClassificationTask

TASK = ClassificationTask(name="t", labels=("negative", "neutral", "positive"))


def write(tmp_path, name, df, **kw):
    path = tmp_path / name
    if name.endswith(".csv"):
        df.to_csv(path, index=False, **kw)
    elif name.endswith(".tsv"):
        df.to_csv(path, sep="\t", index=False)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path


FRAME = pd.DataFrame({"body": ["good day", "bad day", "meh", "  good day  ", "", "fine"],
                      "y": ["positive", "negative", "neutral", "positive", "neutral", ""]})


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.parquet"])
def test_formats_load_and_clean(tmp_path, name):
    path = write(tmp_path, name, FRAME)
    df = data.load_labelled(DatasetSettings(path=str(path), text_column="body", label_column="y",
                                            encoding="utf-8"), TASK)
    assert list(df.columns) == ["text", "label"]
    # stripped, empty text and empty label dropped, duplicate after stripping dropped
    assert list(df["text"]) == ["good day", "bad day", "meh"]


def test_latin1_csv(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("text,sentiment\ncaf\xe9 ok,neutral\n".encode("latin-1"))
    df = data.load_labelled(DatasetSettings(path=str(path), encoding="latin-1"), TASK)
    assert df["text"][0] == "café ok"


def test_missing_column_named(tmp_path):
    path = write(tmp_path, "d.csv", FRAME)
    with pytest.raises(data.DataError, match=r"missing column\(s\) \['text'\]"):
        data.load_labelled(DatasetSettings(path=str(path), label_column="y"), TASK)


def test_empty_dataset(tmp_path):
    path = write(tmp_path, "d.csv", FRAME.iloc[:0])
    with pytest.raises(data.DataError, match="no usable rows"):
        data.load_labelled(DatasetSettings(path=str(path), text_column="body", label_column="y"), TASK)


def test_label_outside_set_named(tmp_path):
    df = pd.DataFrame({"text": ["a", "b"], "sentiment": ["positive", "ecstatic"]})
    path = write(tmp_path, "d.csv", df)
    with pytest.raises(data.DataError, match=r"\['ecstatic'\]"):
        data.load_labelled(DatasetSettings(path=str(path)), TASK)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.load_labelled(DatasetSettings(path=str(tmp_path / "no.csv")), TASK)
    (tmp_path / "d.xyz").write_text("x")
    with pytest.raises(data.DataError, match="cannot tell the format"):
        data.load_labelled(DatasetSettings(path=str(tmp_path / "d.xyz")), TASK)


def test_split_is_stable_and_independent_of_other_rows():
    texts = [f"text number {i}" for i in range(2000)]
    df = pd.DataFrame({"text": texts, "label": ["neutral"] * 2000})
    train, test = data.split(df, 0.2)
    assert 300 < len(test) < 500 and len(train) + len(test) == 2000
    assert not set(train["text"]) & set(test["text"])
    # Same texts, other order, extra rows: every original text stays in its split.
    bigger = pd.concat([df.sample(frac=1, random_state=3),
                        pd.DataFrame({"text": [f"new {i}" for i in range(500)], "label": "neutral"})])
    _, test2 = data.split(bigger, 0.2)
    assert set(test["text"]) == set(test2["text"]) & set(texts)


def test_limit_rows_is_stable_subsample():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": "neutral"})
    a = data.limit_rows(df, 10)
    b = data.limit_rows(df.sample(frac=1, random_state=1), 10)
    assert len(a) == 10 and set(a["text"]) == set(b["text"])
    assert data.limit_rows(df, None) is df


def test_human_labels_win_and_never_leak_into_test():
    base = pd.DataFrame({"text": ["a", "b"], "label": ["negative", "negative"]})
    test = pd.DataFrame({"text": ["t"], "label": ["neutral"]})
    human = pd.DataFrame({"text": ["b", "c", "t"], "label": ["positive", "neutral", "positive"]})
    merged = data.merge_human_labels(base, human, test)
    assert dict(zip(merged["text"], merged["label"])) == {"a": "negative", "b": "positive", "c": "neutral"}


def test_digest_changes_with_content():
    a = pd.DataFrame({"text": ["x"], "label": ["neutral"]})
    b = pd.DataFrame({"text": ["x"], "label": ["positive"]})
    assert data.digest(a) != data.digest(b) and data.digest(a) == data.digest(a.copy())


def test_frozen_split_caps_test_rows_stably():
    df = pd.DataFrame({"text": [f"text number {i}" for i in range(3000)], "label": "neutral"})
    full_train, full_test = data.split(df, 0.2)
    ds = DatasetSettings(max_test_rows=100, max_train_rows=500)
    train, test = data.frozen_split(df, ds)
    assert len(test) == 100 and len(train) == 500
    assert set(test["text"]) <= set(full_test["text"]) and set(train["text"]) <= set(full_train["text"])
    _, again = data.frozen_split(df.sample(frac=1, random_state=7), ds)
    assert set(again["text"]) == set(test["text"])  # the same texts whatever the row order
    _, uncapped = data.frozen_split(df, DatasetSettings())
    assert len(uncapped) == len(full_test)
