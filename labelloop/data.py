"""Labelled text: read the configured sources, clean, map labels, and split by a stable hash.

`load_splits` is the one entry point: it reads the training source (`dataset.path` or
`dataset.train`) and, when given, the `test` and `validation` sources (labelloop/sources.py),
turns each into `text`/`label` rows (`prepare`: null and empty texts dropped, the configured
cleaning, the label map, conflicting duplicates resolved, every drop counted in a `Report`),
and splits. Without a test source the split depends on the text alone (md5), so a text lands
in the same split in every run, on every machine, and whatever rows are added later: the test
split is frozen, which champion/challenger comparisons rely on. With a test source that source
is the test split; its content digest (recorded with every model) is what stays fixed.
Human labels join the training split only (see `merge_human_labels`).

Frames leaving this module have the columns `text` and `label` (`prepare` keeps further
columns when asked, for task families with more than one text per row). With
`dataset.weight_column`, training rows also carry `weight` (that column's value, a number >= 0:
labelloop.training multiplies each row's loss by it); `dataset.min_weight` drops the training
rows below it after the split, so the test split (and the validation rows) stay exactly what
they are without weights.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from labelloop.cleaning import Cleaning
from labelloop.settings import DatasetSettings, SourceSettings, as_label
from labelloop.sources import DataError, SourceInfo, combined_digest, read_source
from labelloop.tasks import ClassificationTask

__all__ = ["DataError", "Report", "Splits", "load_splits", "load_labelled", "prepare", "split",
           "limit_rows", "merge_human_labels", "digest", "human_digest", "text_bucket",
           "text_value", "WEIGHT", "SOFT_TARGETS", "drop_light_rows"]

WEIGHT = "weight"  # the per-row loss weight column of training frames (dataset.weight_column)
# Optional column of training frames: per row, a probability for each task label (in
# task.labels order), the target the loss fits instead of the row's one label (a teacher's
# probabilities: knowledge distillation)
SOFT_TARGETS = "soft_targets"


# -- values --------------------------------------------------------------------------------
def _is_null(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value)) or value is pd.NA \
            or value is pd.NaT
    except TypeError:
        return False


def text_value(value: Any) -> Optional[str]:
    """A cell as text, or None when it holds no text (null, NaN). Numbers become their text."""
    if _is_null(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    label = as_label(value)
    return label if isinstance(label, str) else str(label)


def read_table(path, fmt: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    """One file as a raw table (any family's columns): labelloop.sources reads it."""
    from pathlib import Path

    from labelloop.sources import parse_table

    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_table(raw, str(path), fmt, encoding)


# -- the report ----------------------------------------------------------------------------
@dataclass
class Report:
    """What happened to the rows of one source: every dropped row is counted here."""

    source: str
    rows_read: int = 0
    null_text: int = 0
    empty_text: int = 0
    null_label: int = 0
    unmapped_label: int = 0
    unmapped_values: dict[str, int] = field(default_factory=dict)
    changed_by_cleaning: int = 0
    duplicates: int = 0        # same text, same label: one kept
    conflicts: int = 0         # texts with more than one label
    conflict_rows_dropped: int = 0
    kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self, duplicates_rule: str = "first") -> str:
        """One line: what was read, what was dropped and why."""
        bits = []
        if self.null_text or self.empty_text:
            bits.append(f"{self.null_text + self.empty_text} without text "
                        f"({self.null_text} null, {self.empty_text} empty)")
        if self.null_label:
            bits.append(f"{self.null_label} without label")
        if self.unmapped_label:
            top = ", ".join(f"{k!r} x{v}" for k, v in
                            sorted(self.unmapped_values.items(), key=lambda kv: -kv[1])[:5])
            bits.append(f"{self.unmapped_label} with a label the map drops ({top})")
        if self.duplicates:
            bits.append(f"{self.duplicates} duplicate texts")
        if self.conflicts:
            bits.append(f"{self.conflicts} texts with conflicting labels ("
                        + ("all dropped" if duplicates_rule == "drop" else
                           f"{duplicates_rule} wins") + ")")
        cleaned = (f"; cleaning changed {self.changed_by_cleaning}"
                   if self.changed_by_cleaning else "")
        dropped = "; dropped " + ", ".join(bits) if bits else ""
        return f"{self.source}: {self.rows_read} rows read, {self.kept} kept{dropped}{cleaned}"


# -- one source -> text/label rows ---------------------------------------------------------
def _map_labels(raw: pd.Series, settings: DatasetSettings, task: ClassificationTask,
                report: Report, where: str) -> pd.Series:
    labels = raw.map(text_value).map(lambda v: v.strip() if isinstance(v, str) else v)
    labels = labels.map(lambda v: None if v == "" else v)
    report.null_label = int(labels.isna().sum())
    if settings.label_map is not None:
        mapped = labels.map(lambda v: settings.label_map.get(v) if v is not None else None)
        lost = labels.notna() & mapped.isna()
        report.unmapped_label = int(lost.sum())
        report.unmapped_values = dict(Counter(labels[lost]).most_common(20))
        return mapped
    unknown = sorted(set(labels.dropna()) - set(task.labels))
    if unknown:
        raise DataError(
            f"{where}: label(s) {unknown[:20]} are not in the configured label set "
            f"{list(task.labels)} (fix the data or task.labels, or map them with "
            "dataset.label_map)")
    return labels


def _resolve_duplicates(df: pd.DataFrame, rule: str, report: Report) -> pd.DataFrame:
    """One row per text. Same label: the first is kept. Different labels: `rule` decides
    (first, last, majority: the most frequent label, ties to the first seen; drop: none)."""
    before = len(df)
    conflicted = df.groupby("text", sort=False)["label"].transform("nunique") > 1
    report.conflicts = int(df.loc[conflicted, "text"].nunique())
    if rule == "drop":
        report.conflict_rows_dropped = int(conflicted.sum())
        out = df[~conflicted].drop_duplicates("text", keep="first")
    elif rule == "majority" and report.conflicts:
        # groups in order of first appearance; idxmax takes the first of equal counts
        counts = df.groupby(["text", "label"], sort=False).size().reset_index(name="n")
        best = counts.loc[counts.groupby("text", sort=False)["n"].idxmax()]
        winner = df["text"].map(dict(zip(best["text"], best["label"])))
        out = df[df["label"] == winner].drop_duplicates("text", keep="first")
    else:
        out = df.drop_duplicates("text", keep="last" if rule == "last" else "first")
    report.duplicates = before - len(out) - report.conflict_rows_dropped
    return out


def _number(value: Any) -> float:
    """A weight cell as a float; NaN for anything that is not a number (null, "", "high")."""
    if _is_null(value) or isinstance(value, bool):
        return math.nan
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return math.nan


def _empty(value: Any) -> bool:
    return _is_null(value) or (isinstance(value, str) and not value.strip())


def read_weights(values: pd.Series, column: str, where: str,
                 missing: Optional[float] = None) -> pd.Series:
    """The weight column's cells as floats >= 0; one DataError naming the column otherwise.
    Empty cells (null, "") take `missing` (dataset.missing_weight), or are an error without it;
    non-numbers, infinities and negative values are always refused."""
    empty = values.map(_empty).astype(bool)
    if empty.any() and missing is None:
        examples = ", ".join(f"data row {i + 1}" for i in values[empty].index[:3])
        raise DataError(
            f"{where}: dataset.weight_column {column!r} is empty in {int(empty.sum())} of "
            f"{len(values)} rows ({examples}, ...); give them a weight with "
            "dataset.missing_weight (e.g. 1.0), or fill the column")
    weights = values.map(_number).astype(float)
    weights[empty] = missing if missing is not None else math.nan
    for bad, what in ((~np.isfinite(weights), "not a number"), (weights < 0, "negative")):
        if bad.any():
            examples = ", ".join(f"data row {i + 1}: {v!r}"
                                 for i, v in values[bad].head(3).items())
            raise DataError(
                f"{where}: dataset.weight_column {column!r} has {int(bad.sum())} value(s) that "
                f"are {what} ({examples}); every training row needs a weight >= 0 (fix the "
                "data, or unset dataset.weight_column)")
    return weights


def prepare(raw: pd.DataFrame, settings: DatasetSettings, task: ClassificationTask,
            where: str, cleaning: Optional[Cleaning] = None,
            keep_columns: tuple[str, ...] = (),
            weight_column: Optional[str] = None) -> tuple[pd.DataFrame, Report]:
    """A raw table as cleaned `text`/`label` rows, and the report of what was dropped. With
    `weight_column`, the rows also carry `weight` (read_weights: bad values are an error)."""
    cleaning = cleaning or Cleaning.from_settings(settings.cleaning)
    wanted = [settings.text_column, settings.label_column, *keep_columns]
    missing = [c for c in wanted if c not in raw.columns]
    if weight_column is not None and weight_column not in raw.columns:
        raise DataError(
            f"{where}: no column {weight_column!r} (dataset.weight_column); it has "
            f"{list(raw.columns)[:30]}")
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; it has {list(raw.columns)[:30]} "
            "(set dataset.text_column / dataset.label_column)")
    report = Report(source=where, rows_read=len(raw))
    text = raw[settings.text_column].map(text_value)
    report.null_text = int(text.isna().sum())
    cleaned = cleaning.series(text)
    report.changed_by_cleaning = int(((cleaned != text) & text.notna()).sum())
    empty = cleaned.notna() & cleaned.map(
        lambda t: not t.strip() if isinstance(t, str) else True).astype(bool)
    report.empty_text = int(empty.sum())
    # Rows without a text go first: their label cell is not judged (a broken CSV line's
    # continuation is such a row, with text in the label column and none in the text column).
    keep = cleaned.notna() & ~empty
    label = _map_labels(raw.loc[keep, settings.label_column], settings, task, report, where)
    df = pd.DataFrame({"text": cleaned[keep], "label": label,
                       **{c: raw.loc[keep, c] for c in keep_columns}})
    df = df[df["label"].notna()]
    if weight_column is not None:  # rows that stay so far (a dropped row's cell is not judged)
        df = df.assign(**{WEIGHT: read_weights(raw.loc[df.index, weight_column], weight_column,
                                               where, settings.missing_weight)})
    df = _resolve_duplicates(df, settings.duplicates, report).reset_index(drop=True)
    report.kept = len(df)
    return df, report


# -- the whole dataset ---------------------------------------------------------------------
@dataclass
class Splits:
    """The rows a training run uses and where they came from."""

    train: pd.DataFrame
    test: pd.DataFrame
    validation: Optional[pd.DataFrame]
    sources: list[SourceInfo]
    reports: list[Report]
    test_from_source: bool
    notes: list[str] = field(default_factory=list)

    @property
    def source_digest(self) -> str:
        return combined_digest(self.sources)

    def summary_lines(self, duplicates_rule: str = "first") -> list[str]:
        lines = [r.summary(duplicates_rule) for r in self.reports] + list(self.notes)
        how = "the test source" if self.test_from_source else "a hash of each text"
        lines.append(f"split: {len(self.train)} training, {len(self.test)} test rows (test by "
                     f"{how})" + (f", {len(self.validation)} validation rows"
                                  if self.validation is not None else ""))
        return lines


def _load(src: SourceSettings, role: str, settings: DatasetSettings, task: ClassificationTask,
          cleaning: Cleaning) -> tuple[pd.DataFrame, SourceInfo, Report]:
    raw, info = read_source(src, role, settings.encoding)
    where = f"{role} source {info.name}" if role != "train" or settings.test is not None \
        else info.name
    # Weights are read from the training source only: test and validation rows are unweighted.
    df, report = prepare(raw, settings, task, where, cleaning,
                         weight_column=settings.weight_column if role == "train" else None)
    if df.empty:
        raise DataError(f"{where}: no usable rows after cleaning "
                        f"({report.summary(settings.duplicates)})")
    return df, info, report


def drop_test_overlap(train: pd.DataFrame, test: pd.DataFrame, column: str, test_uri: str,
                      rule: str, rows: str = "rows") -> tuple[pd.DataFrame, Optional[str]]:
    """Training rows whose `column` (a text, a prompt) the test source also has: an error naming
    them (`dataset.test_overlap: error`), or dropped, with the note that says so (`drop`)."""
    overlap = train[column].isin(set(test[column]))
    if not overlap.any():
        return train, None
    examples = list(train.loc[overlap, column].head(3).map(lambda t: t[:60]))
    if rule == "error":
        raise DataError(
            f"the test source {test_uri} shares {int(overlap.sum())} {column}s with the "
            f"training source (e.g. {examples}); remove them, or set "
            "dataset.test_overlap: drop to drop them from training")
    return train[~overlap].reset_index(drop=True), (
        f"dropped {int(overlap.sum())} training {rows} whose {column} is in the test source "
        "(dataset.test_overlap: drop)")


def _check_classes(df: pd.DataFrame, where: str, settings: DatasetSettings) -> None:
    present = sorted(set(df["label"]))
    if len(present) < 2:
        hint = " (check dataset.label_map)" if settings.label_map is not None else ""
        raise DataError(f"{where}: only the class {present} is left; training needs at least "
                        f"two{hint}")


def load_splits(settings: DatasetSettings, task: ClassificationTask) -> Splits:
    """Read, clean and split the configured dataset; every problem is a `DataError`."""
    cleaning = Cleaning.from_settings(settings.cleaning)
    train_all, info, report = _load(settings.train_source(), "train", settings, task, cleaning)
    sources, reports, notes = [info], [report], []
    validation = None
    if settings.test is not None:
        test, tinfo, treport = _load(settings.test, "test", settings, task, cleaning)
        sources.append(tinfo)
        reports.append(treport)
        train, note = drop_test_overlap(train_all, test, "text", tinfo.name,
                                        settings.test_overlap)
        notes.extend([note] if note else [])
    else:
        train, test = split(train_all, settings.test_fraction)
    if settings.validation is not None:
        validation, vinfo, vreport = _load(settings.validation, "validation", settings, task,
                                           cleaning)
        sources.append(vinfo)
        reports.append(vreport)
        if validation["text"].isin(set(test["text"])).any():
            raise DataError(f"the validation source {vinfo.name} shares texts with the test "
                            "split; they must be disjoint")
        train = train[~train["text"].isin(set(validation["text"]))].reset_index(drop=True)
    elif settings.validation_fraction > 0:
        train, validation = split_validation(train, settings.validation_fraction)
        notes.append(f"validation: {len(validation)} rows of the training split "
                     f"(dataset.validation_fraction {settings.validation_fraction})")
    if settings.weight_column is not None:
        # Only the training rows are weighted (and filtered): the split above is by text alone,
        # so no row moved between splits, and the test and validation rows stay complete.
        test = test.drop(columns=[WEIGHT], errors="ignore")
        if validation is not None:
            validation = validation.drop(columns=[WEIGHT], errors="ignore")
        train, dropped = drop_light_rows(train, settings.min_weight)
        if dropped:
            notes.append(f"dropped {dropped} training rows with {settings.weight_column} < "
                         f"{settings.min_weight} (dataset.min_weight; test and validation rows "
                         "are kept)")
        if not train.empty and not (train[WEIGHT] > 0).any():
            raise DataError(f"every training row has {settings.weight_column} 0 "
                            "(dataset.weight_column): nothing to learn from")
        if not train.empty:
            w = train[WEIGHT]
            notes.append(f"weights: {settings.weight_column} on {len(train)} training rows (min "
                         f"{w.min():.3g}, mean {w.mean():.3g}, max {w.max():.3g})")
    train = limit_rows(train, settings.max_train_rows)
    test = limit_rows(test, settings.max_test_rows)
    if train.empty or test.empty:
        raise DataError(
            f"split left {len(train)} training and {len(test)} test rows; need both non-empty "
            "(more data, another dataset.test_fraction, or a test source)")
    _check_classes(train, "the training rows", settings)
    return Splits(train=train, test=test, validation=validation, sources=sources,
                  reports=reports, test_from_source=settings.test is not None, notes=notes)


def load_labelled(settings: DatasetSettings, task: ClassificationTask) -> pd.DataFrame:
    """The training source's cleaned `text`/`label` rows (all rows, before any split: with a
    single source, `split` of this is the same split `load_splits` makes)."""
    df, _, _ = _load(settings.train_source(), "train", settings, task,
                     Cleaning.from_settings(settings.cleaning))
    return df


def labelled_texts(settings: DatasetSettings, task: ClassificationTask) -> set[str]:
    """Every text of the labelled data (all sources), for skipping them in an unlabelled pool."""
    cleaning = Cleaning.from_settings(settings.cleaning)
    texts: set[str] = set()
    for role, src in (("train", settings.train_source()), ("test", settings.test),
                      ("validation", settings.validation)):
        if src is not None:
            texts |= set(_load(src, role, settings, task, cleaning)[0]["text"])
    return texts


def drop_light_rows(train: pd.DataFrame, min_weight: Optional[float]) -> tuple[pd.DataFrame, int]:
    """Training rows whose `weight` is at least `min_weight` (all of them for None), and how
    many were dropped. Applied to training rows only, after the split."""
    if min_weight is None or WEIGHT not in train.columns:
        return train, 0
    light = train[WEIGHT] < min_weight
    return train[~light].reset_index(drop=True), int(light.sum())


# -- legacy cleaning of already-prepared rows (human labels) -------------------------------
def clean(df: pd.DataFrame) -> pd.DataFrame:
    """Strip whitespace, drop empty texts and labels, and drop duplicate texts (first wins)."""
    out = pd.DataFrame({
        "text": df["text"].map(text_value).map(lambda t: t.strip() if t is not None else ""),
        "label": df["label"].map(text_value).map(lambda t: t.strip() if t is not None else ""),
    })
    out = out[(out["text"] != "") & (out["label"] != "")]
    out = out.drop_duplicates(subset="text", keep="first")
    return out.reset_index(drop=True)


# -- split, subsample, merge ---------------------------------------------------------------
def text_bucket(text: str) -> float:
    """A stable number in [0, 1) for a text, the same on every machine and run."""
    if not isinstance(text, str):
        raise DataError(f"expected a text, got {type(text).__name__} {text!r}")
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(df: pd.DataFrame, test_fraction: float,
          column: str = "text") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test split by the hash of `column` (the text; a generation family's prompt): the
    test split never changes between runs."""
    is_test = df[column].map(text_bucket) < test_fraction
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def split_validation(train: pd.DataFrame, fraction: float,
                     column: str = "text") -> tuple[pd.DataFrame, pd.DataFrame]:
    """`fraction` of the training rows as validation rows, by a salted hash of `column`: the
    same texts every run, and independent of the test split's hash."""
    is_val = train[column].map(lambda t: text_bucket("validation:" + t)) < fraction
    return train[~is_val].reset_index(drop=True), train[is_val].reset_index(drop=True)


def limit_rows(df: pd.DataFrame, max_rows: int | None, column: str = "text") -> pd.DataFrame:
    """A stable subsample (by hash order of `column`), for quick runs on a laptop."""
    if max_rows is None or len(df) <= max_rows:
        return df
    order = df[column].map(lambda t: text_bucket("sample:" + t)).sort_values().index
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
    base_train: pd.DataFrame, human: pd.DataFrame, test: pd.DataFrame,
    cleaning: Optional[Cleaning] = None,
) -> pd.DataFrame:
    """Training rows = base rows + human rows; human labels win for the same text.

    Texts in the frozen test split are never trained on, whoever labelled them. `cleaning`
    (the dataset's) is applied to the human texts too, for tasks imported uncleaned.
    """
    if not human.empty and cleaning is not None and not cleaning.is_identity:
        human = human.assign(text=cleaning.series(human["text"].map(text_value)))
    human = clean(human[["text", "label"]]) if not human.empty else human
    combined = pd.concat([human, base_train], ignore_index=True)
    if WEIGHT in combined.columns:  # a human label weighs 1 (dataset.weight_column)
        combined[WEIGHT] = combined[WEIGHT].astype(float).fillna(1.0)
    combined = combined.drop_duplicates(subset="text", keep="first")
    combined = combined[~combined["text"].isin(set(test["text"]))]
    return combined.reset_index(drop=True)


def human_digest(rows: pd.DataFrame) -> str:
    """Digest of human labels (order-free): equal means the same labels; "none" for none."""
    if rows is None or rows.empty:
        return "none"
    return digest(rows[["text", "label"]].sort_values(["text", "label"]))


def digest(df: pd.DataFrame) -> str:
    """A short content digest of a labelled frame (stored with every model version)."""
    h = hashlib.sha256()
    for text, label in zip(df["text"], df["label"]):
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
        h.update(str(label).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]
