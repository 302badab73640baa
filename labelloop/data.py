"""Labelled text: load from CSV/TSV/JSONL/Parquet, clean, and split by a stable hash.

Every frame leaving this module has exactly two columns, `text` and `label`. The split depends
on the text alone (md5), so a text lands in the same split in every run, on every machine, and
whatever rows are added later: the test split is frozen, which champion/challenger comparisons
rely on. Human labels join the training split only (see `merge_human_labels`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from labelloop.settings import ConfigError, DatasetSettings, resolve_path
from labelloop.tasks import ClassificationTask


class DataError(ValueError):
    """A dataset problem, found before any training starts."""


_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"cannot tell the format of {path} from its suffix; set dataset.format to one of "
            f"{sorted(set(_FORMATS.values()))}"
        ) from None


def read_table(path: Path, fmt: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    fmt = _detect_format(path, fmt)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(
                path, sep="\t" if fmt == "tsv" else ",", encoding=encoding, dtype=str,
                keep_default_na=False, encoding_errors="replace",
            )
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, encoding=encoding)
        return pd.read_parquet(path)
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"could not read {path} as {fmt}: {exc}") from exc


def clean(df: pd.DataFrame) -> pd.DataFrame:
    """Strip whitespace, drop empty texts and labels, and drop duplicate texts (first wins)."""
    out = pd.DataFrame({
        "text": df["text"].astype(str).str.strip(),
        "label": df["label"].astype(str).str.strip(),
    })
    out = out[(out["text"] != "") & (out["label"] != "") & (out["text"].str.lower() != "nan")]
    out = out.drop_duplicates(subset="text", keep="first")
    return out.reset_index(drop=True)


def load_labelled(settings: DatasetSettings, task: ClassificationTask) -> pd.DataFrame:
    """Load, validate and clean the configured dataset into `text`/`label` rows."""
    try:
        path = resolve_path(settings.path)
    except ConfigError as exc:
        raise DataError(str(exc)) from exc
    raw = read_table(path, settings.format, settings.encoding)
    missing = [c for c in (settings.text_column, settings.label_column) if c not in raw.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has {list(raw.columns)} "
            "(set dataset.text_column / dataset.label_column)"
        )
    df = clean(raw.rename(columns={settings.text_column: "text", settings.label_column: "label"}))
    if df.empty:
        raise DataError(f"{path}: no usable rows after cleaning (empty texts or labels dropped)")
    unknown = sorted(set(df["label"]) - set(task.labels))
    if unknown:
        raise DataError(
            f"{path}: label(s) {unknown} are not in the configured label set {list(task.labels)} "
            "(fix the data or task.labels)"
        )
    return df


def text_bucket(text: str) -> float:
    """A stable number in [0, 1) for a text, the same on every machine and run."""
    digest = hashlib.md5(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(df: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test split by the text's hash: the test split never changes between runs."""
    is_test = df["text"].map(text_bucket) < test_fraction
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def limit_rows(df: pd.DataFrame, max_rows: int | None) -> pd.DataFrame:
    """A stable subsample (by hash order), for quick runs on a laptop."""
    if max_rows is None or len(df) <= max_rows:
        return df
    order = df["text"].map(lambda t: text_bucket("sample:" + t)).sort_values().index
    return df.loc[order[:max_rows]].reset_index(drop=True)


def frozen_split(df: pd.DataFrame, settings: DatasetSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The configured split: hash split, then the stable caps on each side.

    `max_test_rows` keeps a stable subsample of the frozen test split: every run and every
    version is scored on the same texts, so comparisons stay paired; it trades a wider noise
    interval for a shorter test pass (the CPU demo's feedback turn).
    """
    train, test = split(df, settings.test_fraction)
    return limit_rows(train, settings.max_train_rows), limit_rows(test, settings.max_test_rows)


def merge_human_labels(
    base_train: pd.DataFrame, human: pd.DataFrame, test: pd.DataFrame
) -> pd.DataFrame:
    """Training rows = base rows + human rows; human labels win for the same text.

    Texts in the frozen test split are never trained on, whoever labelled them.
    """
    human = clean(human[["text", "label"]]) if not human.empty else human
    combined = pd.concat([human, base_train], ignore_index=True)
    combined = combined.drop_duplicates(subset="text", keep="first")
    combined = combined[~combined["text"].isin(set(test["text"]))]
    return combined.reset_index(drop=True)


def digest(df: pd.DataFrame) -> str:
    """A short content digest of a labelled frame (stored with every model version)."""
    h = hashlib.sha256()
    for text, label in zip(df["text"], df["label"]):
        h.update(text.encode("utf-8"))
        h.update(b"\x1f")
        h.update(str(label).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]
