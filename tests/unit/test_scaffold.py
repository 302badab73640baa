"""`labelloop init` (labelloop/scaffold.py): a first config guessed from the user's data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from labelloop import cli, scaffold
from labelloop.data import load_splits
from labelloop.settings import load_settings
from labelloop.tasks import task_from_settings


def reviews(tmp_path, n=60):
    """A web export: HTML entities, a latin-1 byte, an id column, stars 1-5, few 5s."""
    stars = [1, 2, 3, 4][:] * (n // 4)
    stars[:3] = [5, 5, 5]
    rows = [{"id": i, "body": f"review n&#039;{i}: caf\xe9 &amp; more words here",
             "stars": s} for i, s in enumerate(stars)]
    path = tmp_path / "reviews" / "train.csv"
    path.parent.mkdir()
    pd.DataFrame(rows).to_csv(path, index=False, encoding="latin-1")
    return path


def test_init_writes_a_config_that_loads_with_its_guesses(tmp_path, monkeypatch, capsys):
    data = reviews(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "--data", str(data)]) == 0
    written = (tmp_path / "labelloop.yaml").read_text()
    cfg = yaml.safe_load(written)
    assert cfg["task"] == {"type": "classification", "name": "reviews",  # the folder's name
                           "labels": ["1", "2", "3", "4", "5"]}
    assert cfg["dataset"]["text_column"] == "body" and cfg["dataset"]["label_column"] == "stars"
    assert cfg["dataset"]["encoding"] == "latin-1"  # the é byte is not UTF-8
    assert cfg["dataset"]["cleaning"] == {"html_entities": True}
    assert cfg["training"]["class_weights"] == "auto"  # the 5s are 5% of the rows
    for line in written.splitlines():  # every key says what it is
        if line.strip() and not line.startswith("#") and not line.rstrip().endswith(":"):
            assert " # " in line, line
    settings = load_settings(str(tmp_path / "labelloop.yaml"), environ={})
    splits = load_splits(settings.dataset, task_from_settings(settings))
    assert "review n'" in splits.train["text"].iloc[0] and "&amp;" not in "".join(splits.train["text"])
    out = capsys.readouterr().out
    assert "wrote labelloop.yaml: a classification task 'reviews'" in out
    assert "next: labelloop train --config labelloop.yaml" in out


def test_columns_without_telling_names_and_balanced_plain_text(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"n": i, "a": f"a longer text number {i} about things",
                                        "b": ["spam", "ham"][i % 2]}) + "\n" for i in range(20)))
    g = scaffold.guess(str(path))
    assert g.columns == {"label_column": "b", "text_column": "a"} and g.labels == ["ham", "spam"]
    assert g.html_entities == 0 and g.smallest_share == 0.5 and g.encoding == "utf-8"
    text = scaffold.render(g, str(path), None, None)
    cfg = yaml.safe_load(text)
    assert cfg["training"]["class_weights"] == "off"
    assert cfg["dataset"]["cleaning"]["html_entities"] is False


def test_chat_data_gives_a_generation_config_that_loads(tmp_path):
    from labelloop.generation.data import load_splits as load_pairs

    path = tmp_path / "support.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"question {i}?"},
        {"role": "assistant", "content": f"answer {i}."}]}) + "\n" for i in range(30)))
    out = tmp_path / "gen.yaml"
    assert cli.main(["init", "--data", str(path), "--output", str(out)]) == 0
    settings = load_settings(str(out), environ={})
    assert settings.task.type == "generation" and settings.task.name == "support"
    assert settings.promotion.metric == "chrf" and settings.dataset.messages_column == "messages"
    assert len(load_pairs(settings.dataset).train) > 10


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = reviews(tmp_path)
    (tmp_path / "only_text.csv").write_text("text\n" + "".join(f"t {i}\n" for i in range(9)))
    cases = [(["--data", str(tmp_path / "nope.csv")], "nope.csv"),
             (["--data", str(tmp_path / "only_text.csv")], "no column looks like labels"),
             (["--data", str(data), "--label-column", "grade"], "--label-column 'grade' is not"),
             (["--data", str(data), "--text-column", "stars", "--label-column", "stars"],
              "the text and label columns are both 'stars'")]
    for args, message in cases:
        assert cli.main(["init", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not list(tmp_path.glob("*.yaml")) and not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "labelloop.yaml").write_text("mine: 1\n")
    assert cli.main(["init", "--data", str(data)]) == 2
    assert "labelloop.yaml exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "labelloop.yaml").read_text() == "mine: 1\n"
    with pytest.raises(scaffold.ScaffoldError, match="no column holds text"):
        scaffold.guess(str(reviews_numbers(tmp_path)))


def reviews_numbers(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("score,grade\n" + "".join(f"{i % 3},{i}\n" for i in range(12)))
    return path
