"""Prompt/response rows: the chatterbot corpus or a user's file, cleaned and split by prompt.

Every frame leaving this module has exactly two columns, `prompt` and `response`. Sources:
- the `chatterbot-corpus` package's YAML files (`dataset.path` a folder of `.yml` files or one
  file; format `chatterbot`): each conversation `[a, b, c, ...]` gives the rows a -> b, b -> c, ...
  (each turn answered by the next). Read directly: chatterbot itself is not imported;
- CSV/TSV/JSONL/Parquet (labelloop.data.read_table) with `dataset.prompt_column` and
  `dataset.response_column`, or a chat column `dataset.messages_column` (a list of
  {role, content}, or its JSON text): each assistant turn becomes a row, the user message
  before it the prompt.

Cleaning as for classification (strip, drop empty), duplicates are whole pairs (one prompt may
have several good answers). The split hashes the prompt with labelloop.data's `text_bucket`, so
a prompt and all its answers sit on one side and the test split never changes between runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from labelloop import data
from labelloop.data import DataError
from labelloop.settings import ConfigError, DatasetSettings, resolve_path

COLUMNS = ["prompt", "response"]
CHATTERBOT_ENGLISH = "package:chatterbot_corpus/data/english"


def _is_chatterbot(path: Path, fmt: str) -> bool:
    return fmt == "chatterbot" or (fmt == "auto" and (path.is_dir() or path.suffix.lower() in (".yml", ".yaml")))


def read_chatterbot(path: Path) -> pd.DataFrame:
    """Consecutive turns of every conversation in the YAML file(s) as prompt/response rows."""
    files = sorted(path.glob("*.yml")) + sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"no chatterbot YAML files at {path}")
    rows = []
    for f in files:
        try:
            # BaseLoader: every scalar stays a string ("yes" is not True, "1.0" not a float).
            doc = yaml.load(f.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DataError(f"{f}: not a readable chatterbot YAML file ({exc})") from exc
        conversations = doc.get("conversations") if isinstance(doc, dict) else None
        if not isinstance(conversations, list):
            raise DataError(f"{f}: no `conversations` list (not a chatterbot corpus file)")
        for conv in conversations:
            turns = [t for t in conv if isinstance(t, str)] if isinstance(conv, list) else []
            rows.extend({"prompt": a, "response": b} for a, b in zip(turns, turns[1:]))
    return pd.DataFrame(rows, columns=COLUMNS)


def _messages_rows(values) -> pd.DataFrame:
    rows = []
    for value in values:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise DataError(f"a messages value is not JSON: {value[:80]!r}") from None
        msgs = [m for m in list(value) if isinstance(m, dict)] if value is not None else []
        for prev, msg in zip(msgs, msgs[1:]):
            if msg.get("role") == "assistant" and prev.get("role") == "user":
                rows.append({"prompt": prev.get("content"), "response": msg.get("content")})
    return pd.DataFrame(rows, columns=COLUMNS)


def read_user_file(path: Path, settings: DatasetSettings) -> pd.DataFrame:
    raw = data.read_table(path, settings.format, settings.encoding)
    pc, rc, mc = settings.prompt_column, settings.response_column, settings.messages_column
    if pc in raw.columns and rc in raw.columns:
        return raw.rename(columns={pc: "prompt", rc: "response"})[COLUMNS]
    if mc in raw.columns:
        return _messages_rows(raw[mc])
    missing = [c for c in (pc, rc) if c not in raw.columns]
    raise DataError(
        f"{path}: missing column(s) {missing} (or a chat column {mc!r}); the file has "
        f"{list(raw.columns)} (set dataset.prompt_column / dataset.response_column / "
        "dataset.messages_column)")


def clean(df: pd.DataFrame) -> pd.DataFrame:
    """Strip whitespace, drop empty prompts or responses, drop duplicate pairs (first wins)."""
    out = pd.DataFrame({c: df[c].map(lambda v: "" if v is None else str(v)).str.strip()
                        for c in COLUMNS})
    keep = (out["prompt"] != "") & (out["response"] != "") & (out["prompt"].str.lower() != "nan") \
        & (out["response"].str.lower() != "nan")
    return out[keep].drop_duplicates(subset=COLUMNS, keep="first").reset_index(drop=True)


def load_pairs(settings: DatasetSettings) -> pd.DataFrame:
    """Load, validate and clean the configured dataset into `prompt`/`response` rows."""
    try:
        path = resolve_path(settings.path)
    except ConfigError as exc:
        raise DataError(str(exc)) from exc
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    raw = read_chatterbot(path) if _is_chatterbot(path, settings.format) else read_user_file(path, settings)
    df = clean(raw)
    if df.empty:
        raise DataError(f"{path}: no usable prompt/response rows after cleaning")
    return df


def split(df: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test by the prompt's hash (labelloop.data.text_bucket): frozen, and a prompt's
    answers never straddle the split."""
    is_test = df["prompt"].map(data.text_bucket) < test_fraction
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def limit_rows(df: pd.DataFrame, max_rows: int | None) -> pd.DataFrame:
    """A stable subsample (by the hash of each pair), for quick runs."""
    if max_rows is None or len(df) <= max_rows:
        return df
    order = (df["prompt"] + "\x1f" + df["response"]).map(
        lambda t: data.text_bucket("sample:" + t)).sort_values().index
    return df.loc[order[:max_rows]].reset_index(drop=True)


def frozen_split(df: pd.DataFrame, settings: DatasetSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    train, test = split(df, settings.test_fraction)
    return limit_rows(train, settings.max_train_rows), limit_rows(test, settings.max_test_rows)


def digest(df: pd.DataFrame) -> str:
    """labelloop.data's content digest over prompt/response pairs."""
    return data.digest(df.rename(columns={"prompt": "text", "response": "label"}))
