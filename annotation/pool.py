"""The unlabelled pool: the texts annotators are asked to label, from a source of their own.

Where the pool comes from, first match wins:
  1. texts given directly (`labelloop annotate import --file F`: a .txt file with one text per
     line, or any data file / zip / datasets directory a source can name; tests pass lists);
  2. `pool.source` (file(s), zip members, SQL: like `dataset.train`, labelloop/sources.py);
  3. `pool.from_training_split: true`: the labelled training split (the demo's simulation).
Nothing configured is an error: the labelled training split is never the pool by default.

Every text is cleaned the way the serving model was trained (its recorded cleaning), so the
annotator reads what the model reads and the label comes back as training data unchanged. Texts
already in the labelled data (training or test) are skipped and counted, as are empty texts and
repeats; a pool left with no texts is an error, before anything is imported anywhere. Kept free
of any annotation tool, so Label Studio and Argilla share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from labelloop.cleaning import Cleaning
from labelloop.data import DataError, text_bucket, text_value
from labelloop.settings import Settings, SourceSettings
from labelloop.sources import read_source


class PoolError(DataError):
    """No usable unlabelled texts."""


@dataclass
class Pool:
    texts: list[str]
    source: str
    read: int = 0
    empty: int = 0
    repeated: int = 0
    labelled: int = 0          # already in the training or test data
    skipped: dict[str, int] = field(default_factory=dict)
    unit: str = "texts"        # what the pool holds, as people say it: texts | prompts

    def report(self) -> dict:
        return {"pool_source": self.source, "pool_read": self.read, "pool_texts": len(self.texts),
                "pool_unit": self.unit,
                "skipped_empty": self.empty, "skipped_repeated": self.repeated,
                "skipped_already_labelled": self.labelled}


def summary(report: dict) -> Optional[str]:
    """One line for people: where an import's texts came from and what was skipped (None when
    the report says nothing of a pool)."""
    if "pool_read" not in report:
        return None
    done = report.get("imported", report.get("logged"))
    skipped = (f"{report['skipped_already_labelled']} already labelled, "
               f"{report['skipped_empty']} empty, {report['skipped_repeated']} repeated")
    in_tool = report.get("skipped_in_project")
    return (f"pool {report['pool_source']}: {report['pool_read']} "
            f"{report.get('pool_unit', 'texts')} read, "
            f"{report['pool_texts']} usable; skipped {skipped}"
            + (f", {in_tool} already in the project" if in_tool else "")
            + (f"; {done} imported" if done is not None else ""))


def source_texts(src: SourceSettings, text_column: str, role: str = "pool") -> tuple[list, str]:
    """The raw text cells of a source and its description."""
    raw, info = read_source(src, role, "utf-8")
    column = text_column
    if column not in raw.columns:
        if list(raw.columns) == ["text"] and info.kind != "sql":
            column = "text"  # a .txt file: one text per line
        else:
            raise PoolError(f"pool source {info.uri}: no column {text_column!r}; it has "
                            f"{list(raw.columns)[:30]} (set pool.text_column)")
    return list(raw[column]), info.uri


def file_source(path: str) -> SourceSettings:
    """`--file F`: any file a source can read; an unknown suffix is read as one text per line."""
    from labelloop.sources import FORMATS

    p = Path(path)
    known = p.suffix.lower() in FORMATS or p.suffix.lower() == ".zip" or p.is_dir()
    return SourceSettings(path=str(p), format="auto" if known else "txt")


def raw_pool(settings: Settings, file: Optional[str] = None) -> tuple[list, str]:
    """The pool's raw texts (before cleaning and skipping) and where they came from."""
    column = settings.pool.text_column or settings.dataset.text_column
    if file is not None:
        return source_texts(file_source(file), column)
    if settings.pool.source is not None:
        return source_texts(settings.pool.source, column)
    if settings.pool.from_training_split:
        from labelloop.data import load_splits
        from labelloop.tasks import task_from_settings

        if settings.task.type == "generation":  # the prompts of the training split
            from labelloop.generation import steps

            return (list(dict.fromkeys(steps.load(settings)[0]["prompt"])),
                    "the labelled training split (pool.from_training_split)")
        train = load_splits(settings.dataset, task_from_settings(settings)).train
        return list(train["text"]), "the labelled training split (pool.from_training_split)"
    raise PoolError(
        "no unlabelled pool: set pool.source (a file, files or an SQL query of texts), pass "
        "`labelloop annotate import --file FILE`, or set pool.from_training_split: true to "
        "send texts of the labelled training split")


def labelled_texts(settings: Settings) -> set[str]:
    """The texts (generation: the prompts) of the labelled data."""
    from labelloop.data import labelled_texts as texts_of
    from labelloop.tasks import task_from_settings

    if settings.task.type == "generation":
        from labelloop.generation.data import labelled_prompts

        return labelled_prompts(settings.dataset)

    return texts_of(settings.dataset, task_from_settings(settings))


def build_pool(settings: Settings, cleaning: Cleaning, texts: Optional[Iterable] = None,
               file: Optional[str] = None, skip: Optional[set[str]] = None,
               where: str = "the given texts") -> Pool:
    """The cleaned, de-duplicated pool without already-labelled texts (`skip` adds more).
    `texts` (with `where` they came from) instead of reading the configured pool."""
    if texts is not None:
        raw = list(texts)
    else:
        raw, where = raw_pool(settings, file)
    training_split = where.startswith("the labelled training split")
    labelled = set() if training_split else labelled_texts(settings)
    pool = Pool(texts=[], source=where, read=len(raw),
                unit="prompts" if settings.task.type == "generation" else "texts")
    seen: set[str] = set()
    for value in raw:
        text = text_value(value)
        text = cleaning(text) if text is not None else None
        if text is None or not text.strip():
            pool.empty += 1
        elif text in seen:
            pool.repeated += 1
        elif text in labelled or (skip and text in skip):
            pool.labelled += 1
        else:
            seen.add(text)
            pool.texts.append(text)
    if not pool.texts:
        raise PoolError(
            f"the pool ({where}) has no {pool.unit} to import: {pool.read} read, {pool.empty} empty, "
            f"{pool.repeated} repeated, {pool.labelled} already in the labelled data")
    return pool


def candidates(texts: list[str], n: int) -> list[str]:
    """A stable sample of `n` texts (by hash): the same pool gives the same candidates."""
    if len(texts) <= n:
        return texts
    order = pd.Series(texts).map(lambda t: text_bucket("pool:" + t)).sort_values().index
    return [texts[i] for i in order[:n]]
