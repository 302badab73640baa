"""Prompt/response rows: the chatterbot corpus or a user's file, cleaned and split by prompt.

Every frame leaving this module has exactly two columns, `prompt` and `response`. Sources:
- the `chatterbot-corpus` package's YAML files (`dataset.path` a folder of `.yml` files or one
  file; format `chatterbot`): each conversation `[a, b, c, ...]` gives the rows a -> b, b -> c, ...
  (each turn answered by the next). Read directly: chatterbot itself is not imported;
- any source labelloop.sources reads (files, lists and globs, zip members, SQL, `datasets`
  folders; `dataset.path` or `dataset.train`, and `dataset.test`) with `dataset.prompt_column`
  and `dataset.response_column`, or a chat column `dataset.messages_column` (a list of
  {role, content}, or its JSON text): each assistant turn becomes a row, the user message
  before it the prompt.

Cleaning as for classification (strip, drop null or empty, counted per source), duplicates are
whole pairs (one prompt may have several good answers). The split hashes the prompt with
labelloop.data's `text_bucket`, so a prompt and all its answers sit on one side and the test
split never changes between runs; a test source replaces it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from labelloop import data
from labelloop.data import DataError
from labelloop.generation import chat
from labelloop.settings import ConfigError, DatasetSettings, SourceSettings, resolve_path
from labelloop.sources import SourceInfo, _is_hf_dir, combined_digest, package_spec, read_source

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
        for i, msg in enumerate(msgs):
            if i and msg.get("role") == "assistant" and msgs[i - 1].get("role") == "user":
                # the chat so far is the prompt: earlier turns are context the answer needs
                context = [{"role": str(m.get("role")), "content": str(m.get("content")).strip()}
                           for m in msgs[:i] if not data._is_null(m.get("content"))
                           and str(m.get("content")).strip()]
                prompt = chat.conversation_prompt(context) if context else None
                rows.append({"prompt": prompt, "response": msg.get("content")})
    return pd.DataFrame(rows, columns=COLUMNS)


def _pairs_from_table(raw: pd.DataFrame, settings: DatasetSettings, where: str) -> pd.DataFrame:
    pc, rc, mc = settings.prompt_column, settings.response_column, settings.messages_column
    if pc in raw.columns and rc in raw.columns:
        return raw.rename(columns={pc: "prompt", rc: "response"})[COLUMNS]
    if mc in raw.columns:
        return _messages_rows(raw[mc])
    missing = [c for c in (pc, rc) if c not in raw.columns]
    raise DataError(
        f"{where}: missing column(s) {missing} (or a chat column {mc!r}); it has "
        f"{list(raw.columns)[:30]} (set dataset.prompt_column / dataset.response_column / "
        "dataset.messages_column)")


def _counted_clean(df: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """`clean`, and how many pairs it dropped as empty and as repeats."""
    out = pd.DataFrame({c: df[c].map(lambda v: "" if data._is_null(v) else str(v)).str.strip()
                        for c in COLUMNS})
    keep = (out["prompt"] != "") & (out["response"] != "")
    kept = out[keep]
    unique = kept.drop_duplicates(subset=COLUMNS, keep="first").reset_index(drop=True)
    return unique, int((~keep).sum()), len(kept) - len(unique)


def clean(df: pd.DataFrame) -> pd.DataFrame:
    """Strip whitespace, drop empty (or null) prompts or responses, drop duplicate pairs (first
    wins)."""
    return _counted_clean(df)[0]


@dataclass
class PairsReport:
    """What one source gave, for the run's `data:` lines (as labelloop.data.Report does for the
    classifier's rows)."""

    source: str
    rows_read: int       # table rows (a chat column: conversations)
    pairs: int           # the prompt/response pairs they hold
    empty: int           # without prompt or response
    duplicates: int      # the same pair again
    kept: int

    def summary(self) -> str:
        bits = [f"{n} {what}" for n, what in ((self.empty, "without prompt or response"),
                                               (self.duplicates, "repeated pairs")) if n]
        pairs = f", {self.pairs} prompt/response pairs" if self.pairs != self.rows_read else ""
        return (f"{self.source}: {self.rows_read} rows read{pairs}, {self.kept} kept"
                + ("; dropped " + ", ".join(bits) if bits else ""))


def _is_chatterbot_source(src: SourceSettings) -> Optional[Path]:
    """The resolved path when `src` is chatterbot YAML (a folder of .yml files, one file)."""
    if src.url is not None or not isinstance(src.path, str) or any(c in src.path for c in "*?["):
        return None
    try:
        path = resolve_path(src.path)
    except ConfigError as exc:
        raise DataError(str(exc)) from exc
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    return path if _is_chatterbot(path, src.format) and not _is_hf_dir(path) else None


def load_source(src: SourceSettings, role: str,
                settings: DatasetSettings) -> tuple[pd.DataFrame, SourceInfo, PairsReport]:
    """One source's cleaned prompt/response pairs: a chatterbot corpus, or any source
    labelloop.sources reads (files, lists and globs, zip members, SQL, `datasets` folders)."""
    chatterbot = _is_chatterbot_source(src)
    if chatterbot is not None:
        raw_pairs = read_chatterbot(chatterbot)
        files = sorted(chatterbot.glob("*.y*ml")) if chatterbot.is_dir() else [chatterbot]
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
        info = SourceInfo(role, str(chatterbot), "chatterbot", digest, len(raw_pairs),
                          shown=package_spec(src.path))
        rows_read = len(raw_pairs)
    else:
        raw, info = read_source(src, role, settings.encoding)
        rows_read = len(raw)
        raw_pairs = _pairs_from_table(raw, settings, f"{role} source {info.name}")
    pairs, empty, repeated = _counted_clean(raw_pairs)
    where = f"{role} source {info.name}" if role != "train" or settings.test is not None \
        else info.name
    report = PairsReport(where, rows_read, len(raw_pairs), empty, repeated, len(pairs))
    if pairs.empty:
        raise DataError(f"{where}: no usable prompt/response rows after cleaning "
                        f"({report.summary()})")
    return pairs, info, report


@dataclass
class PairSplits:
    train: pd.DataFrame
    test: pd.DataFrame
    sources: list[SourceInfo]
    reports: list[PairsReport]
    test_from_source: bool
    notes: list[str] = field(default_factory=list)

    @property
    def source_digest(self) -> str:
        return combined_digest(self.sources)

    def summary_lines(self) -> list[str]:
        how = "the test source" if self.test_from_source else "a hash of each prompt"
        return [r.summary() for r in self.reports] + list(self.notes) + [
            f"split: {len(self.train)} training, {len(self.test)} test pairs "
            f"({self.test['prompt'].nunique()} distinct test prompts; test by {how})"]


def load_splits(settings: DatasetSettings) -> PairSplits:
    """The training and test pairs: the test source when there is one (a prompt in both is an
    error, or dropped from training with dataset.test_overlap: drop), else the frozen split by
    prompt; then the row caps. Every problem is a `DataError`, before anything is trained."""
    if settings.validation is not None:
        raise DataError("dataset.validation: generation has no validation rows; unset it")
    train_all, info, report = load_source(settings.train_source(), "train", settings)
    sources, reports, notes = [info], [report], []
    if settings.test is not None:
        test, tinfo, treport = load_source(settings.test, "test", settings)
        sources.append(tinfo)
        reports.append(treport)
        train, note = data.drop_test_overlap(train_all, test, "prompt", tinfo.name,
                                             settings.test_overlap, rows="pairs")
        notes.extend([note] if note else [])
    else:
        train, test = split(train_all, settings.test_fraction)
    for name, rows, cap in (("training", train, settings.max_train_rows),
                            ("test", test, settings.max_test_rows)):
        if cap is not None and len(rows) > cap:
            notes.append(f"{name}: a stable sample of {cap} of the {len(rows)} pairs "
                         f"(dataset.max_{'train' if name == 'training' else 'test'}_rows)")
    train = limit_rows(train, settings.max_train_rows)
    test = limit_rows(test, settings.max_test_rows)
    if train.empty or test.empty:
        raise DataError(f"split left {len(train)} training and {len(test)} test rows; need both "
                        "non-empty (more data, another dataset.test_fraction, or a test source)")
    return PairSplits(train, test, sources, reports, settings.test is not None, notes)


def load_pairs(settings: DatasetSettings) -> pd.DataFrame:
    """The training source's cleaned prompt/response pairs (before any split)."""
    return load_source(settings.train_source(), "train", settings)[0]


def labelled_prompts(settings: DatasetSettings) -> set[str]:
    """Every prompt of the labelled data: the training source's and the test source's."""
    prompts = set(load_pairs(settings)["prompt"])
    if settings.test is not None:
        prompts |= set(load_source(settings.test, "test", settings)[0]["prompt"])
    return prompts


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
