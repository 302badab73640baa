"""The labels store: human labels from annotation tools, one SQLite file, source-agnostic.

One row per annotation, keyed by (source, project, annotation_id): Label Studio today, Argilla
next, each tool converts its own answers into `LabelRecord`s and hands them to `upsert` /
`delete`. A row keeps its provenance (task id, annotator, times, the model version and label the
annotator was shown, whether they changed it) and a status:

- `active`   a valid label, used for training;
- `invalid`  the tool sent it, but it cannot be trained on (empty result, label outside the task's
             label set, skipped task): kept so it is reported and so ordering still works;
- `deleted`  removed in the tool (a tombstone: a late create of the same id never resurrects it).

Ordering: every write carries the tool's own `updated_at`; a write older than what the row holds
is ignored, so webhook events and export pulls agree whichever arrives first or twice. Two
different versions with the same `updated_at` are ordered by a digest of their content (the
larger wins), so concurrent deliveries end in the same state in any order; provenance a loser
brings (the prediction shown) still fills what the winner lacks.
Every write is one SQLite transaction (WAL journal), so a process killed midway loses nothing
that was committed and leaves nothing half-written.

`training_rows(settings)` gives the final active labels, one per text (the latest annotation
wins). A per-write sequence number lets the feedback loop count "labels since the last run".

Task families share the store: a row's `text` is what the model was given and `label` the human
answer, a class name for classification, the response text for generation (`task.type:
generation`); `training_rows` names the columns as the family's rows do (`task.row_columns`:
text/label, or prompt/response). A row's `kind` says what sort of answer it is:

- `label`       a classification answer (the default: rows from before kinds existed are these);
- `response`    a generation *edit* answer: `label` is the final response, `shown_label` the one
                the annotator was shown, `changed` whether they changed it and `edit_distance`
                how much (normalized character-level Levenshtein distance, 0 = unedited,
                1 = nothing kept; after stripping surrounding whitespace); `rating` the
                annotator's optional 1-5 rating of the response shown (NULL: not rated);
- `preference`  a generation *compare* answer: `choice` is `a`, `b`, `tie` or `both_bad`; for `a`
                and `b`, `label` is the chosen response and `rejected` the other one; for a tie or
                both bad, `label` holds response A and `rejected` response B. `chosen_version` /
                `rejected_version` name the model versions that wrote them (the same version for
                two samples of one model).

`training_rows` gives only the family's training kind (`task.training_kind`: `label` rows for
classification, `response` rows for generation); `preference_rows` gives the decided
preferences (choice a or b; ties and both-bad are stored and counted, never returned there).
Generation answers become records through labelloop/generation/answers.py, the one conversion
both annotation tools use: an empty response, a comparison without a choice or with two
identical responses is stored `invalid` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pandas as pd

from labelloop.settings import Settings
from labelloop.tasks import PREFERENCE_CHOICES, task_from_settings

ACTIVE = "active"
INVALID = "invalid"
DELETED = "deleted"

# What `upsert` / `delete` report for one record.
INSERTED = "inserted"
UPDATED = "updated"
UNCHANGED = "unchanged"
STALE = "stale"  # older than what the store holds: ignored
GONE = "gone"  # the annotation was deleted earlier: ignored
REMOVED = "removed"  # delete applied
TOMBSTONED = "tombstoned"  # delete of an annotation never seen: recorded so a late create is ignored

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    source         TEXT NOT NULL,
    project        TEXT NOT NULL,
    annotation_id  TEXT NOT NULL,
    task_id        TEXT,
    text           TEXT,
    label          TEXT,
    annotator      TEXT,
    created_at     TEXT,
    updated_at     TEXT,
    updated_ts     REAL NOT NULL DEFAULT 0,
    model_version  TEXT,
    shown_label    TEXT,
    shown_score    REAL,
    changed        INTEGER,
    status         TEXT NOT NULL,
    reason         TEXT,
    via            TEXT,
    seq            INTEGER NOT NULL,
    first_seq      INTEGER NOT NULL,
    stored_at      REAL NOT NULL,
    content_digest TEXT,
    kind           TEXT NOT NULL DEFAULT 'label',
    rejected       TEXT,
    choice         TEXT,
    edit_distance  REAL,
    chosen_version TEXT,
    rejected_version TEXT,
    rating         INTEGER,
    PRIMARY KEY (source, project, annotation_id)
);
CREATE INDEX IF NOT EXISTS labels_status ON labels (status, text);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback_runs (
    project   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at        REAL NOT NULL,
    reason    TEXT
);
"""

_PROVENANCE_FIELDS = (
    "task_id", "text", "annotator", "created_at", "model_version", "shown_label", "shown_score",
)
# The kinds of answer a row holds (see the module docstring).
LABEL, RESPONSE, PREFERENCE = "label", "response", "preference"
KINDS = (LABEL, RESPONSE, PREFERENCE)
CHOICES = PREFERENCE_CHOICES  # a preference's choice; a and b decide it
DECIDED = ("a", "b")

# Generation answers' own columns. They count in the content digest only when a record has
# them, so a classification record's digest is what it was before they existed.
_GENERATION_FIELDS = ("kind", "rejected", "choice", "edit_distance", "chosen_version",
                      "rejected_version")
# An edit answer's optional rating: part of the answer (a changed rating is a new version),
# in the content digest only when given, so digests of unrated records stay what they were.
_RATING = "rating"
_CONTENT_FIELDS = (
    "task_id", "text", "label", "annotator", "created_at", "model_version", "shown_label",
    "shown_score", "changed", "status", "reason",
) + _GENERATION_FIELDS + (_RATING,)
_PROVENANCE_FIELDS += ("chosen_version", "rejected_version")


def content_digest(record: "LabelRecord") -> str:
    """Breaks ties between versions of one annotation with the same `updated_at`: a digest of
    the content the record brings (before any merge with what the store holds)."""
    values = [getattr(record, k) for k in _CONTENT_FIELDS
              if k not in _GENERATION_FIELDS and k != _RATING]
    if record.kind != LABEL or any(getattr(record, k) is not None
                                   for k in _GENERATION_FIELDS if k != "kind"):
        values += [getattr(record, k) for k in _GENERATION_FIELDS]
    if record.rating is not None:
        values += [_RATING, record.rating]
    return hashlib.sha256(json.dumps(values, default=str).encode("utf-8", "surrogatepass")).hexdigest()


# Columns added after the first stores were made: (name, SQL type and default).
_ADDED_COLUMNS = (
    ("content_digest", "TEXT"),  # NULL ranks lowest in tie-breaking
    ("kind", "TEXT NOT NULL DEFAULT 'label'"),  # every older row is a classification label
    ("rejected", "TEXT"), ("choice", "TEXT"), ("edit_distance", "REAL"),
    ("chosen_version", "TEXT"), ("rejected_version", "TEXT"),
    ("rating", "INTEGER"),  # older rows: not rated
)


def _migrate(conn: sqlite3.Connection) -> None:
    """Add to an older store the columns it lacks (the data it holds stays as it is)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(labels)")}
    for name, decl in _ADDED_COLUMNS:
        if name in have:
            continue
        try:
            conn.execute(f"ALTER TABLE labels ADD COLUMN {name} {decl}")
        except sqlite3.OperationalError as exc:  # another process added it meanwhile
            if "duplicate column" not in str(exc):
                raise


def normalized_edit_distance(shown: str, final: str) -> float:
    """Character-level Levenshtein distance between two responses, divided by the longer
    one's length (0: identical, 1: nothing in common), after stripping surrounding whitespace
    (an editor's trailing newline is not an edit)."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(shown.strip(), final.strip()))


def parse_time(value: Any) -> float:
    """A tool's timestamp (ISO 8601 string, epoch number or None) as epoch seconds."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"unreadable timestamp {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class LabelRecord:
    """One annotation as a tool reports it, already converted to labelloop's terms.

    `label` is None and `reason` says why when the annotation cannot be trained on
    (status `invalid`).
    """

    source: str
    project: str
    annotation_id: str
    text: Optional[str]
    label: Optional[str]
    task_id: Optional[str] = None
    annotator: Optional[str] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    model_version: Optional[str] = None
    shown_label: Optional[str] = None
    shown_score: Optional[float] = None
    changed: Optional[bool] = None
    status: str = ACTIVE
    reason: Optional[str] = None
    via: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Generation answers (module docstring); a classification record leaves them as they are.
    kind: str = LABEL
    rejected: Optional[str] = None  # preference: the response not chosen
    choice: Optional[str] = None  # preference: a | b | tie | both_bad
    edit_distance: Optional[float] = None  # response: shown -> final, normalized 0..1
    chosen_version: Optional[str] = None  # preference: the model version of `label`
    rejected_version: Optional[str] = None  # preference: the model version of `rejected`
    rating: Optional[int] = None  # response: the annotator's rating of the response shown

    def __post_init__(self) -> None:
        self.project = str(self.project)
        self.annotation_id = str(self.annotation_id)
        if self.task_id is not None:
            self.task_id = str(self.task_id)
        if self.status not in (ACTIVE, INVALID):
            raise ValueError(f"a record's status is {ACTIVE!r} or {INVALID!r}, not {self.status!r}")
        if self.kind not in KINDS:
            raise ValueError(f"a record's kind is one of {KINDS}, not {self.kind!r}")
        if self.status == ACTIVE and (not self.text or self.label is None):
            raise ValueError("an active label record needs a text and a label")
        if self.status == ACTIVE and self.kind == PREFERENCE and (
                self.choice not in CHOICES or self.rejected is None):
            raise ValueError(f"an active preference record needs a choice in {CHOICES} and a "
                             "rejected response")
        if self.rating is not None and (self.kind != RESPONSE or isinstance(self.rating, bool)
                                        or not isinstance(self.rating, int)
                                        or self.rating < 1):
            raise ValueError(f"a rating is a whole number >= 1 of a {RESPONSE!r} record, not "
                             f"{self.rating!r} of a {self.kind!r} record")
        if self.kind == RESPONSE and self.edit_distance is None and self.label is not None \
                and self.shown_label is not None:
            self.edit_distance = normalized_edit_distance(self.shown_label, self.label)

    @classmethod
    def invalid(cls, reason: str, **kw: Any) -> "LabelRecord":
        kw.setdefault("label", None)
        kw.setdefault("text", None)
        return cls(status=INVALID, reason=reason, **kw)


class LabelsStore:
    """The SQLite labels store. Cheap to open; open one per call or keep one per thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        _migrate(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "LabelsStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue instead of failing)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    @staticmethod
    def _next_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        seq = (int(row["value"]) if row else 0) + 1
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq', ?)", (str(seq),))
        return seq

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, record: LabelRecord) -> str:
        """Record an annotation, or replace an older version of it. Returns what happened."""
        return self.upsert_many([record])[0]

    def upsert_many(self, records: Iterable[LabelRecord]) -> list[str]:
        """Several records in ONE transaction (all or nothing)."""
        outcomes = []
        with self.transaction() as conn:
            for record in records:
                outcomes.append(self._upsert(conn, record))
        return outcomes

    def _upsert(self, conn: sqlite3.Connection, r: LabelRecord) -> str:
        new_ts = parse_time(r.updated_at)
        digest = content_digest(r)
        old = conn.execute(
            "SELECT * FROM labels WHERE source=? AND project=? AND annotation_id=?",
            (r.source, r.project, r.annotation_id),
        ).fetchone()
        values = {
            "task_id": r.task_id, "text": r.text, "label": r.label, "annotator": r.annotator,
            "created_at": r.created_at, "model_version": r.model_version,
            "shown_label": r.shown_label,
            "shown_score": None if r.shown_score is None else float(r.shown_score),
            "changed": None if r.changed is None else int(bool(r.changed)),
            "status": r.status, "reason": r.reason, "kind": r.kind, "rejected": r.rejected,
            "choice": r.choice,
            "edit_distance": None if r.edit_distance is None else float(r.edit_distance),
            "chosen_version": r.chosen_version, "rejected_version": r.rejected_version,
            "rating": r.rating,
        }
        _derive(values)
        if old is not None:
            if old["status"] == DELETED:
                return GONE
            if new_ts < old["updated_ts"]:
                self._fill_provenance(conn, r, old)
                return STALE
            # Provenance does not change between versions of one annotation; a channel that
            # lacks some of it (a webhook does not carry the prediction shown) keeps what the
            # other one brought.
            for k in _PROVENANCE_FIELDS:
                if values[k] is None:
                    values[k] = old[k]
            _derive(values)
            # Total order on (updated_at, content digest): which of two same-time versions
            # wins never depends on which arrived last.
            newer = (new_ts, digest) > (old["updated_ts"], old["content_digest"] or "")
            if all(old[k] == values[k] for k in _CONTENT_FIELDS):
                if newer:
                    conn.execute(
                        "UPDATE labels SET updated_at=?, updated_ts=?, content_digest=? WHERE"
                        " source=? AND project=? AND annotation_id=?",
                        (r.updated_at, new_ts, digest, r.source, r.project, r.annotation_id),
                    )
                return UNCHANGED
            if not newer:
                self._fill_provenance(conn, r, old)
                return STALE
            seq = self._next_seq(conn)
            conn.execute(
                "UPDATE labels SET task_id=:task_id, text=:text, label=:label, annotator=:annotator,"
                " created_at=:created_at, updated_at=:updated_at, updated_ts=:updated_ts,"
                " model_version=:model_version, shown_label=:shown_label,"
                " shown_score=:shown_score, changed=:changed, status=:status, reason=:reason,"
                " via=:via, seq=:seq, stored_at=:stored_at, content_digest=:digest,"
                " kind=:kind, rejected=:rejected, choice=:choice, edit_distance=:edit_distance,"
                " chosen_version=:chosen_version, rejected_version=:rejected_version,"
                " rating=:rating"
                " WHERE source=:source AND project=:project AND annotation_id=:annotation_id",
                {**values, "updated_at": r.updated_at, "updated_ts": new_ts, "via": r.via,
                 "seq": seq, "stored_at": time.time(), "digest": digest, "source": r.source,
                 "project": r.project, "annotation_id": r.annotation_id},
            )
            return UPDATED
        seq = self._next_seq(conn)
        conn.execute(
            "INSERT INTO labels (source, project, annotation_id, task_id, text, label, annotator,"
            " created_at, updated_at, updated_ts, model_version, shown_label, shown_score,"
            " changed, status, reason, via, seq, first_seq, stored_at, content_digest, kind,"
            " rejected, choice, edit_distance, chosen_version, rejected_version, rating)"
            " VALUES"
            " (:source, :project, :annotation_id, :task_id, :text, :label, :annotator,"
            " :created_at, :updated_at, :updated_ts, :model_version, :shown_label, :shown_score,"
            " :changed, :status, :reason, :via, :seq, :seq, :stored_at, :digest, :kind,"
            " :rejected, :choice, :edit_distance, :chosen_version, :rejected_version,"
            " :rating)",
            {**values, "source": r.source, "project": r.project,
             "annotation_id": r.annotation_id, "updated_at": r.updated_at,
             "updated_ts": new_ts, "via": r.via, "seq": seq, "stored_at": time.time(),
             "digest": digest},
        )
        return INSERTED

    @staticmethod
    def _fill_provenance(conn: sqlite3.Connection, r: LabelRecord, old: sqlite3.Row) -> None:
        """A version that lost still brings provenance the winner lacked (provenance does not
        change between versions), so the final row is the same whichever arrived first.
        Only for an active row whose label it would derive `changed` for; no new write number:
        the label did not change."""
        fill = {k: getattr(r, k) for k in _PROVENANCE_FIELDS
                if old[k] is None and getattr(r, k) is not None}
        if not fill:
            return
        if "shown_score" in fill:
            fill["shown_score"] = float(fill["shown_score"])
        merged = {**dict(old), **fill}
        _derive(merged)
        fill["changed"] = merged["changed"]
        if merged.get("kind") == RESPONSE:
            fill["edit_distance"] = merged["edit_distance"]
        sets = ", ".join(f"{k}=:{k}" for k in fill)
        conn.execute(f"UPDATE labels SET {sets} WHERE source=:s AND project=:p AND"
                     " annotation_id=:a", {**fill, "s": r.source, "p": r.project,
                                           "a": r.annotation_id})

    def delete(self, source: str, project: Any, annotation_id: Any, via: str | None = None) -> str:
        return self.delete_many(source, project, [annotation_id], via=via)[0]

    def delete_many(
        self, source: str, project: Any, annotation_ids: Iterable[Any], via: str | None = None
    ) -> list[str]:
        """Mark annotations removed (tombstones for ids never seen). One transaction."""
        outcomes = []
        with self.transaction() as conn:
            for annotation_id in annotation_ids:
                key = (source, str(project), str(annotation_id))
                old = conn.execute(
                    "SELECT status FROM labels WHERE source=? AND project=? AND annotation_id=?", key
                ).fetchone()
                if old is not None and old["status"] == DELETED:
                    outcomes.append(UNCHANGED)
                    continue
                seq = self._next_seq(conn)
                if old is None:
                    conn.execute(
                        "INSERT INTO labels (source, project, annotation_id, status, via, seq,"
                        " first_seq, stored_at, updated_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*key, DELETED, via, seq, seq, time.time(), float("inf")),
                    )
                    outcomes.append(TOMBSTONED)
                else:
                    conn.execute(
                        "UPDATE labels SET status=?, via=?, seq=?, stored_at=?"
                        " WHERE source=? AND project=? AND annotation_id=?",
                        (DELETED, via, seq, time.time(), *key),
                    )
                    outcomes.append(REMOVED)
        return outcomes

    def delete_missing(
        self, source: str, project: Any, present_ids: Iterable[Any], via: str | None = None,
        stored_before: float | None = None,
    ) -> list[str]:
        """After a FULL export: annotations the store holds but the export lacks were deleted.

        `stored_before` (epoch seconds, the time the export was requested) protects rows that
        a webhook wrote after the export snapshot was taken.
        """
        present = {str(i) for i in present_ids}
        query = "SELECT annotation_id FROM labels WHERE source=? AND project=? AND status!=?"
        params: list[Any] = [source, str(project), DELETED]
        if stored_before is not None:
            query += " AND stored_at < ?"
            params.append(stored_before)
        rows = self._conn.execute(query, params).fetchall()
        missing = [r["annotation_id"] for r in rows if r["annotation_id"] not in present]
        if not missing:
            return []
        self.delete_many(source, project, missing, via=via)
        return missing

    # -- reads ----------------------------------------------------------------------------
    def rows(self, source: str | None = None, project: Any = None,
             status: str | None = None) -> pd.DataFrame:
        query, params = "SELECT * FROM labels WHERE 1=1", []
        if source is not None:
            query += " AND source=?"
            params.append(source)
        if project is not None:
            query += " AND project=?"
            params.append(str(project))
        if status is not None:
            query += " AND status=?"
            params.append(status)
        return pd.read_sql_query(query + " ORDER BY seq", self._conn, params=params)

    def get(self, source: str, project: Any, annotation_id: Any) -> Optional[dict[str, Any]]:
        row = self._conn.execute(
            "SELECT * FROM labels WHERE source=? AND project=? AND annotation_id=?",
            (source, str(project), str(annotation_id)),
        ).fetchone()
        return dict(row) if row else None

    def training_rows(self, source: str | None = None, project: Any = None,
                      max_seq: int | None = None, kind: str | None = None) -> pd.DataFrame:
        """Final active labels, one per text (the latest annotation of a text wins).

        `max_seq`: only labels last written at or before that write number, so a retrain trains
        on exactly the labels it later counts as seen (anything newer stays fresh).
        `kind`: only rows of that kind (`label`, `response`); None: every kind but preferences
        (which are pairs, not rows: `preference_rows`)."""
        df = self.rows(source=source, project=project, status=ACTIVE)
        if max_seq is not None:
            df = df[df["seq"] <= int(max_seq)]
        df = df[df["kind"] == kind] if kind is not None else df[df["kind"] != PREFERENCE]
        columns = ["text", "label", "source", "project", "task_id", "annotation_id",
                   "annotator", "created_at", "updated_at", "model_version", "shown_label",
                   "shown_score", "changed"]
        if kind == RESPONSE:
            columns += ["edit_distance", "rating"]
        if df.empty:
            return pd.DataFrame(columns=columns)
        df = df.sort_values(["updated_ts", "seq"]).drop_duplicates("text", keep="last")
        return df[columns].reset_index(drop=True)

    def preference_rows(self, source: str | None = None, project: Any = None,
                        max_seq: int | None = None) -> pd.DataFrame:
        """Active decided preferences (choice a or b), the latest annotation per (prompt,
        chosen, rejected). Ties and both-bad answers are in the store, never here.
        `max_seq` as for `training_rows`."""
        df = self.rows(source=source, project=project, status=ACTIVE)
        if max_seq is not None:
            df = df[df["seq"] <= int(max_seq)]
        df = df[(df["kind"] == PREFERENCE) & df["choice"].isin(DECIDED)]
        df = df.rename(columns={"text": "prompt", "label": "chosen"})
        columns = list(PREFERENCE_COLUMNS)
        if df.empty:
            return pd.DataFrame(columns=columns)
        df = df.sort_values(["updated_ts", "seq"]).drop_duplicates(
            ["prompt", "chosen", "rejected"], keep="last")
        return df[columns].reset_index(drop=True)

    def invalid_rows(self, source: str | None = None, project: Any = None) -> pd.DataFrame:
        return self.rows(source=source, project=project, status=INVALID)

    def current_seq(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        return int(row["value"]) if row else 0

    def last_feedback_seq(self, project: Any = None) -> int:
        row = self._conn.execute(
            "SELECT MAX(seq) AS s FROM feedback_runs WHERE project=?", (_proj(project),)
        ).fetchone()
        return int(row["s"]) if row and row["s"] is not None else 0

    def new_labels_since_last_run(self, project: Any = None, source: str | None = None) -> int:
        """Active labels written (created or changed) since the last `mark_feedback_run`."""
        return self.new_labels_since(self.last_feedback_seq(project), project, source)

    def new_labels_since(self, seq: int, project: Any = None, source: str | None = None) -> int:
        """Active labels written (created or changed) after write number `seq`."""
        query = "SELECT COUNT(*) AS n FROM labels WHERE status=? AND seq>?"
        params: list[Any] = [ACTIVE, int(seq)]
        if project is not None:
            query += " AND project=?"
            params.append(str(project))
        if source is not None:
            query += " AND source=?"
            params.append(source)
        return int(self._conn.execute(query, params).fetchone()["n"])

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: Any) -> None:
        if key == "seq":
            raise ValueError("'seq' is the store's own counter")
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def mark_feedback_run(self, project: Any = None, reason: str | None = None,
                          seq: int | None = None) -> int:
        """Remember that a feedback run consumed everything up to `seq` (default: now)."""
        with self.transaction() as conn:
            if seq is None:
                row = conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
                seq = int(row["value"]) if row else 0
            conn.execute(
                "INSERT INTO feedback_runs (project, seq, at, reason) VALUES (?, ?, ?, ?)",
                (_proj(project), seq, time.time(), reason),
            )
        return seq

    def summary(self, source: str | None = None, project: Any = None) -> dict[str, int]:
        df = self.rows(source=source, project=project)
        counts = df["status"].value_counts().to_dict() if not df.empty else {}
        return {s: int(counts.get(s, 0)) for s in (ACTIVE, INVALID, DELETED)}


def _changed(values: dict[str, Any]) -> Optional[int]:
    if values["status"] == ACTIVE and values["label"] is not None and values["shown_label"]:
        if values.get("kind") == RESPONSE:  # an editor's surrounding whitespace is no change
            return int(values["label"].strip() != values["shown_label"].strip())
        return int(values["label"] != values["shown_label"])
    return values["changed"]


def _derive(values: dict[str, Any]) -> None:
    """What follows from a row's answer and what it was shown: `changed`, and for a response
    its edit distance (recomputed once a late channel brings the response shown)."""
    values["changed"] = _changed(values)
    if values.get("kind") == RESPONSE and values["status"] == ACTIVE and \
            values["label"] is not None and values["shown_label"] is not None:
        values["edit_distance"] = normalized_edit_distance(values["shown_label"], values["label"])


def _proj(project: Any) -> str:
    return "*" if project is None else str(project)


def open_store(settings: Settings) -> LabelsStore:
    return LabelsStore(settings.labels_path)


def training_rows(settings: Settings, source: str | None = None, project: Any = None,
                  max_seq: int | None = None) -> pd.DataFrame:
    """DataFrame[text, label, provenance...]: the final active human labels, one per text
    (for a generation task only its `response` rows, with `prompt` and `response` instead of
    text and label, and their `edit_distance`)."""
    task = task_from_settings(settings)
    with open_store(settings) as store:
        rows = store.training_rows(source=source, project=project, max_seq=max_seq,
                                   kind=task.training_kind)
    return rows.rename(columns=dict(zip(("text", "label"), task.row_columns)))


PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "model_version", "annotator", "source",
                      "project", "task_id", "annotation_id", "choice", "chosen_version",
                      "rejected_version", "updated_at", "seq")


def preference_rows(settings: Settings, source: str | None = None, project: Any = None,
                    max_seq: int | None = None) -> pd.DataFrame:
    """DataFrame[prompt, chosen, rejected, model_version, annotator, source, project, task_id,
    ...]: the decided human preferences (choice a or b), the latest per (prompt, chosen,
    rejected). Ties and both-bad answers are stored and counted, never returned here."""
    with open_store(settings) as store:
        return store.preference_rows(source=source, project=project, max_seq=max_seq)


def new_labels_since_last_run(settings: Settings, project: Any = None) -> int:
    with open_store(settings) as store:
        return store.new_labels_since_last_run(project)


def mark_feedback_run(settings: Settings, project: Any = None, reason: str | None = None,
                      seq: int | None = None) -> int:
    with open_store(settings) as store:
        return store.mark_feedback_run(project, reason, seq)


def record_dict(record: LabelRecord) -> dict[str, Any]:
    return {k: v for k, v in asdict(record).items() if k != "extra"}
