"""The unlabelled pool (annotation/pool.py): its own source, cleaned as the model, labelled texts out."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from annotation import pool
from labelloop.cleaning import Cleaning
from labelloop.settings import Settings

LABELLED = pd.DataFrame({"text": ["already labelled", "also labelled", "a test text"],
                         "sentiment": ["positive", "negative", "neutral"]})


def settings_for(tmp_path, **pool_cfg) -> Settings:
    LABELLED.iloc[:2].to_csv(tmp_path / "train.csv", index=False)
    LABELLED.iloc[2:].to_csv(tmp_path / "test.csv", index=False)
    return Settings(data_dir=str(tmp_path / "data"),
                    dataset={"path": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv"),
                             "encoding": "utf-8", "cleaning": {"html_entities": True}},
                    pool=pool_cfg)


def test_no_pool_configured_is_an_error_not_the_training_split(tmp_path):
    s = settings_for(tmp_path)
    with pytest.raises(pool.PoolError, match="no unlabelled pool: set pool.source"):
        pool.build_pool(s, Cleaning())


def test_file_pool_is_cleaned_and_skips_labelled_texts(tmp_path):
    s = settings_for(tmp_path)
    (tmp_path / "pool.txt").write_text("new &amp; fresh\nalready labelled\n\n"
                                       "a test text\nnew & fresh\nanother one\n")
    got = pool.build_pool(s, Cleaning(html_entities=True, whitespace="strip"),
                          file=str(tmp_path / "pool.txt"))
    assert got.texts == ["new & fresh", "another one"]
    assert (got.read, got.empty, got.repeated, got.labelled) == (6, 1, 1, 2)
    assert got.report()["skipped_already_labelled"] == 2
    # what `labelloop demo` prints after importing them
    line = pool.summary({**got.report(), "imported": 2, "skipped_in_project": 0})
    assert line == (f"pool {got.source}: 6 texts read, 2 usable; skipped 2 already "
                    "labelled, 1 empty, 1 repeated; 2 imported")
    assert pool.summary({"imported": 3}) is None  # a report without a pool (generation prompts)


def test_pool_source_csv_with_its_column_and_sql(tmp_path):
    pd.DataFrame({"body": ["one", "two", None, "already labelled"]}).to_csv(
        tmp_path / "u.csv", index=False)
    s = settings_for(tmp_path, source=str(tmp_path / "u.csv"), text_column="body")
    got = pool.build_pool(s, Cleaning(whitespace="strip"))
    assert got.texts == ["one", "two"] and got.empty == 1 and got.labelled == 1
    db = tmp_path / "u.db"
    with sqlite3.connect(db) as conn:
        pd.DataFrame({"text": ["sql one", "sql two"]}).to_sql("unlabelled", conn, index=False)
    s = settings_for(tmp_path, source={"url": f"sqlite:///{db}", "table": "unlabelled"})
    assert pool.build_pool(s, Cleaning()).texts == ["sql one", "sql two"]
    s = settings_for(tmp_path, source=str(tmp_path / "u.csv"))
    with pytest.raises(pool.PoolError, match=r"no column 'text'.*pool.text_column"):
        pool.build_pool(s, Cleaning())


def test_a_pool_of_only_labelled_or_empty_texts_is_an_error(tmp_path):
    s = settings_for(tmp_path)
    (tmp_path / "p.txt").write_text("already labelled\n   \na test text\n")
    with pytest.raises(pool.PoolError, match="no texts to import: 3 read, 1 empty, 0 repeated, "
                                             "2 already in the labelled data"):
        pool.build_pool(s, Cleaning(whitespace="strip"), file=str(tmp_path / "p.txt"))
    with pytest.raises(pool.DataError, match="pool file not found: .*missing.txt"):
        pool.build_pool(s, Cleaning(), file=str(tmp_path / "missing.txt"))


def test_training_split_only_when_asked(tmp_path):
    s = settings_for(tmp_path, from_training_split=True)
    got = pool.build_pool(s, Cleaning())
    assert sorted(got.texts) == ["already labelled", "also labelled"]
    assert got.source.startswith("the labelled training split")


def test_candidates_are_a_stable_sample():
    texts = [f"t{i}" for i in range(100)]
    a = pool.candidates(texts, 10)
    assert len(a) == 10 and set(a) == set(pool.candidates(list(reversed(texts)), 10))
    assert pool.candidates(texts[:5], 10) == texts[:5]


def test_annotate_import_file_error_is_one_line(tmp_path, capsys):
    from labelloop import cli

    s = settings_for(tmp_path)
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(s.model_dump(mode="json")))
    code = cli.main(["annotate", "import", "-c", str(cfg), "--file", str(tmp_path / "no.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pool file not found" in err[0] and "no.txt" in err[0]
    code = cli.main(["annotate", "import", "-c", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no unlabelled pool" in err[0]
    assert not (tmp_path / "data" / "labels.sqlite").exists()
