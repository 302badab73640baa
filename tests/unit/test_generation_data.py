"""Generation rows: the chatterbot corpus, user files (columns or chat messages), cleaning, the
frozen split by prompt; the chrF / ROUGE-L / perplexity modules; the paired promotion rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labelloop.data import DataError
from labelloop.generation import data as gdata
from labelloop.generation.chat import messages_for
from labelloop.generation import promotion as gprom
from labelloop.generation.evaluation import _modules, text_scores
from labelloop.settings import DatasetSettings


def test_chatterbot_corpus_gives_about_a_thousand_distinct_pairs():
    df = gdata.load_pairs(DatasetSettings(path=gdata.CHATTERBOT_ENGLISH))
    assert list(df.columns) == ["prompt", "response"]
    assert 1000 <= len(df) <= 1300 and not df.duplicated().any()
    assert (df["prompt"].str.len() > 0).all() and (df["response"].str.len() > 0).all()
    train, test = gdata.split(df, 0.2)
    assert set(train["prompt"]).isdisjoint(test["prompt"])  # a prompt never straddles the split
    assert 0.12 < len(test) / len(df) < 0.28


def test_chatterbot_yaml_turns_strings_kept_as_strings(tmp_path):
    (tmp_path / "a.yml").write_text(
        "categories: [x]\nconversations:\n- - Do you agree?\n  - yes\n  - Why?\n  - 1.0\n"
        "- - Hello\n  - Hi\n- - Hello\n  - Hi\n")
    df = gdata.load_pairs(DatasetSettings(path=str(tmp_path)))
    assert df.values.tolist() == [["Do you agree?", "yes"], ["yes", "Why?"], ["Why?", "1.0"],
                                  ["Hello", "Hi"]]
    (tmp_path / "b.yml").write_text("just: text\n")
    with pytest.raises(DataError, match="no `conversations` list"):
        gdata.load_pairs(DatasetSettings(path=str(tmp_path)))


def test_user_files_columns_and_messages(tmp_path):
    pd.DataFrame({"q": ["  Hi ", "Hi", "", "Bye"], "a": ["Hello", "Hello", "x", "Ciao"]}).to_csv(
        tmp_path / "p.csv", index=False)
    df = gdata.load_pairs(DatasetSettings(path=str(tmp_path / "p.csv"), prompt_column="q",
                                          response_column="a", encoding="utf-8"))
    assert df.values.tolist() == [["Hi", "Hello"], ["Bye", "Ciao"]]  # stripped, empty, duplicate
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    df = gdata.load_pairs(DatasetSettings(path=str(tmp_path / "c.jsonl"), encoding="utf-8"))
    # each answer's prompt is the chat before it (the system message and earlier turns too)
    assert df["response"].tolist() == ["4", "6"]
    assert [messages_for(p) for p in df["prompt"]] == [chat[:2], chat[:4]]
    (tmp_path / "one.jsonl").write_text(json.dumps({"messages": chat[1:3]}) + "\n")
    one = gdata.load_pairs(DatasetSettings(path=str(tmp_path / "one.jsonl"), encoding="utf-8"))
    assert one.values.tolist() == [["2+2?", "4"]]  # a single turn: the user's text itself
    pd.DataFrame({"messages": [json.dumps(chat)]}).to_parquet(tmp_path / "c.parquet")
    assert len(gdata.load_pairs(DatasetSettings(path=str(tmp_path / "c.parquet")))) == 2
    pd.DataFrame({"messages": [json.dumps(chat)]}).to_csv(tmp_path / "c.tsv", sep="\t", index=False)
    assert len(gdata.load_pairs(DatasetSettings(path=str(tmp_path / "c.tsv"), encoding="utf-8"))) == 2
    with pytest.raises(DataError, match=r"missing column\(s\) \['prompt', 'response'\]"):
        gdata.load_pairs(DatasetSettings(path=str(tmp_path / "p.csv")))
    with pytest.raises(DataError, match="dataset not found"):
        gdata.load_pairs(DatasetSettings(path=str(tmp_path / "nope.csv")))
    (tmp_path / "e.csv").write_text("prompt,response\n ,x\n")
    with pytest.raises(DataError, match="no usable prompt/response rows"):
        gdata.load_pairs(DatasetSettings(path=str(tmp_path / "e.csv")))


def test_sources_train_and_test_zip_sql_and_what_each_gave(tmp_path):
    """Generation reads every source form the classifier does (labelloop/sources.py), takes a
    test source as its test split, and says what each source gave and dropped."""
    import sqlite3
    import zipfile

    chats = [{"messages": [{"role": "user", "content": f"q{i}"},
                           {"role": "assistant", "content": None if i == 0 else f"a{i}"}]}
             for i in range(6)] + [{"messages": [{"role": "user", "content": "q1"},
                                                  {"role": "assistant", "content": "a1"}]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    pd.DataFrame({"prompt": ["t1", "t2", "q5"], "response": ["x", "y", "z"]}).to_csv(
        tmp_path / "test.csv", index=False)
    cfg = {"train": {"path": str(tmp_path / "train.jsonl")}, "test": str(tmp_path / "test.csv"),
           "encoding": "utf-8"}
    with pytest.raises(DataError, match="shares 1 prompts with the training source"):
        gdata.load_splits(DatasetSettings(**cfg))
    splits = gdata.load_splits(DatasetSettings(**cfg, test_overlap="drop"))
    assert sorted(splits.train["prompt"]) == ["q1", "q2", "q3", "q4"]  # q0 empty, q5 in test
    assert sorted(splits.test["prompt"]) == ["q5", "t1", "t2"] and splits.test_from_source
    lines = splits.summary_lines()
    assert lines[0] == (f"train source {tmp_path / 'train.jsonl'}: 7 rows read, 5 kept; dropped "
                        "1 without prompt or response, 1 repeated pairs")
    assert lines[1].startswith("test source ") and lines[1].endswith("3 rows read, 3 kept")
    assert "dropped 1 training pairs whose prompt is in the test source" in lines[2]
    assert lines[3] == ("split: 4 training, 3 test pairs (3 distinct test prompts; test by the "
                        "test source)")
    assert [s.role for s in splits.sources] == ["train", "test"] and len(splits.source_digest) == 16
    assert gdata.labelled_prompts(DatasetSettings(**cfg)) >= {"q1", "t1", "q5"}
    # a zip member and an SQL query give the same pairs
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.write(tmp_path / "test.csv", "inner/test.csv")
    zipped = gdata.load_pairs(DatasetSettings(train={"path": str(tmp_path / "d.zip"),
                                                     "member": "inner/*.csv"}, encoding="utf-8"))
    db = tmp_path / "d.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE qa (q TEXT, a TEXT)")
        con.executemany("INSERT INTO qa VALUES (?, ?)", [("t1", "x"), ("t2", "y"), ("q5", "z"),
                                                         (None, "w")])
    sql = gdata.load_source(DatasetSettings.model_validate(
        {"train": {"url": f"sqlite:///{db}", "query": "SELECT q AS prompt, a AS response FROM qa"}}
    ).train, "train", DatasetSettings())
    assert zipped.values.tolist() == sql[0].values.tolist() == [["t1", "x"], ["t2", "y"],
                                                                ["q5", "z"]]
    assert sql[2].empty == 1 and sql[1].kind == "sql"
    with pytest.raises(DataError, match="generation has no validation rows"):
        gdata.load_splits(DatasetSettings(**cfg, validation=str(tmp_path / "test.csv")))


def test_split_is_frozen_and_by_prompt():
    df = pd.DataFrame({"prompt": [f"p{i % 50}" for i in range(200)],
                       "response": [f"r{i}" for i in range(200)]})
    train, test = gdata.split(df, 0.3)
    more = pd.concat([df, pd.DataFrame({"prompt": ["new"], "response": ["x"]})])
    _, test2 = gdata.split(more, 0.3)
    assert set(test["prompt"]) <= set(test2["prompt"]) and len(test2) - len(test) in (0, 1)
    assert set(train["prompt"]).isdisjoint(test["prompt"])
    # A stable subsample: the same pairs whatever the row order.
    assert set(gdata.limit_rows(df, 10)["response"]) == \
        set(gdata.limit_rows(df.sample(frac=1, random_state=3), 10)["response"])


def test_metric_modules():
    s = text_scores(["the cat sat", "hello"], ["the cat sat", "goodbye"])
    assert 0.4 < s["chrf"] < 1.0 and s["rouge_l"] == pytest.approx(0.5)
    assert text_scores(["a b c"], ["a b c"]) == {"chrf": pytest.approx(1.0), "rouge_l": 1.0}
    p = _modules()["perplexity"].compute(nll=[3.0, 1.0], tokens=[2, 2])
    assert p["loss"] == pytest.approx(1.0) and p["perplexity"] == pytest.approx(np.e)


def test_paired_rule_on_generation_scores():
    refs = [f"answer number {i} is here" for i in range(60)]
    good = list(refs)
    bad = [f"no {i}" for i in range(60)]
    for metric in ("chrf", "rouge_l"):
        a, b = gprom.per_row_stats(metric, bad, refs), gprom.per_row_stats(metric, good, refs)
        assert gprom.score_from_stats(metric, b) == pytest.approx(
            text_scores(good, refs)[metric])  # the rows re-score the metric exactly
        diff, low, high = gprom.paired_bootstrap(metric, a, b, 200, 0.95)
        assert diff > 0.3 and 0 < low <= diff <= high
        diff, low, high = gprom.paired_bootstrap(metric, b, b, 200, 0.95)
        assert diff == low == high == 0.0
