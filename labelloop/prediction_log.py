"""Prediction log: every served prediction (input, output, model version, time) in a local SQLite.

Used for later review and as a source for the feedback loop. The request path only appends to a
bounded in-memory queue (`record` never blocks and never raises: when the queue is full the rows
are dropped and counted); a background thread writes batches to SQLite and keeps the table bounded
by deleting the oldest rows beyond `max_rows`.

Table `predictions`: id (autoincrement), ts (unix seconds, float), source ('classify', 'ls', ...),
model_version, text (its first `text_chars` characters), text_chars (its full length),
text_sha256 (hex SHA-256 of its UTF-8), label, score, probabilities (JSON object label ->
probability), output and details (generation: the generated text, capped at 4 x text_chars,
and a JSON object with finish reason, token counts and sampling settings; NULL for
classification rows, whose label/score/probabilities are empty for generation rows). Texts are capped so anonymous traffic cannot grow the file beyond about
max_rows x text_chars; the hash still joins a row with the full text held elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    source TEXT NOT NULL,
    model_version TEXT NOT NULL,
    text TEXT NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    probabilities TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""
# Added later; older files get them on open (NULL for the rows written before).
_NEW_COLUMNS = {"text_chars": "INTEGER", "text_sha256": "TEXT", "output": "TEXT",
                "details": "TEXT"}


def _migrate(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    for name, kind in _NEW_COLUMNS.items():
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class LoggedPrediction:
    ts: float
    source: str
    model_version: str
    text: str
    label: str
    score: float
    probabilities: dict[str, float]
    text_chars: Optional[int] = None
    text_sha256: Optional[str] = None
    output: Optional[str] = None
    details: Optional[dict[str, Any]] = None


class PredictionLog:
    """Bounded, non-blocking prediction recorder backed by SQLite.

    `record()` is safe to call from any thread. `close()` flushes what is queued.
    """

    def __init__(
        self,
        path: str | Path,
        max_rows: int = 100_000,
        max_queued_rows: int = 50_000,
        flush_interval_s: float = 0.5,
        enabled: bool = True,
        text_chars: int = 500,
    ):
        self.path = Path(path)
        self.max_rows = int(max_rows)
        self.max_queued_rows = int(max_queued_rows)
        self.flush_interval_s = float(flush_interval_s)
        self.enabled = enabled
        self.text_chars = int(text_chars)
        self._queue: deque[list[tuple]] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.written = 0
        self.dropped = 0
        self.errors = 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(SCHEMA)
                _migrate(conn)
            self._thread = threading.Thread(
                target=self._run, name="prediction-log-writer", daemon=True
            )
            self._thread.start()

    # ---- request path -------------------------------------------------------------------
    def record(
        self,
        texts: Sequence[str],
        predictions: Sequence[Any],
        model_version: str,
        source: str = "classify",
    ) -> int:
        """Queue one request's predictions; returns how many rows were accepted (0 if dropped).

        `predictions` are `labelloop.tasks.Prediction` objects or dicts with label/score/probabilities.
        """
        if not self.enabled or not texts:
            return 0
        n = len(texts)
        with self._lock:
            if self._queued_rows + n > self.max_queued_rows:
                self.dropped += n
                return 0
            self._queued_rows += n
        now = time.time()
        rows = []
        for text, pred in zip(texts, predictions):
            if isinstance(pred, dict):
                label, score, probs = pred["label"], pred["score"], pred["probabilities"]
            else:
                label, score, probs = pred.label, pred.score, pred.probabilities
            rows.append((now, source, str(model_version), text, label, float(score),
                         json.dumps(probs), None, None))
        return self._enqueue(rows)

    def record_generation(self, prompts: Sequence[str], outputs: Sequence[str],
                          model_version: str, source: str = "generate",
                          details: Optional[Sequence[dict[str, Any]]] = None) -> int:
        """Queue one generation request's prompts and outputs (same contract as `record`)."""
        if not self.enabled or not prompts:
            return 0
        n = len(prompts)
        with self._lock:
            if self._queued_rows + n > self.max_queued_rows:
                self.dropped += n
                return 0
            self._queued_rows += n
        now = time.time()
        details = details or [{}] * n
        rows = [(now, source, str(model_version), p, "", 0.0, "{}", o, d)
                for p, o, d in zip(prompts, outputs, details)]
        return self._enqueue(rows)

    def _enqueue(self, rows: list[tuple]) -> int:
        self._queue.append(rows)  # deque.append is thread-safe
        if self._queued_rows >= 1000:
            self._wake.set()
        return len(rows)

    # ---- writer -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _drain(self) -> list[tuple]:
        rows: list[tuple] = []
        while True:
            try:
                rows.extend(self._queue.popleft())
            except IndexError:
                break
        if rows:
            with self._lock:
                self._queued_rows -= len(rows)
        return rows

    def _capped(self, rows: list[tuple]) -> list[tuple]:
        """Rows as stored: the text cut to `text_chars`, plus its length and hash (computed here,
        in the writer thread, not in the request path)."""
        cap = self.text_chars
        return [(ts, src, ver, text[:cap], len(text), text_digest(text), label, score, probs,
                 None if out is None else out[:4 * cap],
                 None if det is None else json.dumps({**det, "output_chars": len(out or "")}))
                for ts, src, ver, text, label, score, probs, out, det in rows]

    def _write(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        with conn:
            conn.executemany(
                "INSERT INTO predictions (ts, source, model_version, text, text_chars, "
                "text_sha256, label, score, probabilities, output, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._capped(rows),
            )
            # Keep the table bounded: ids are monotonic, so the newest max_rows survive.
            conn.execute(
                "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?",
                (self.max_rows,),
            )
        self.written += len(rows)

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                stopping = self._stop.is_set()
                rows = self._drain()
                if rows:
                    try:
                        self._write(conn, rows)
                    except Exception:  # noqa: BLE001 - the log must never take the service down
                        self.errors += 1
                        self.dropped += len(rows)
                        logger.exception("prediction log: writing %d rows failed", len(rows))
                if stopping and not self._queue:
                    break
        finally:
            conn.close()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written (for tests and shutdown)."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                pending = self._queued_rows
            if pending == 0 and not self._queue:
                # one more tick so an in-progress write finishes
                time.sleep(0.05)
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self._thread = None

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "path": str(self.path) if self.enabled else None,
            "written": self.written,
            "dropped": self.dropped,
            "queued": self._queued_rows,
            "errors": self.errors,
            "max_rows": self.max_rows,
        }


def read_predictions(
    path: str | Path, limit: int = 100, since_ts: float | None = None
) -> list[LoggedPrediction]:
    """The newest `limit` logged predictions (newest first), optionally only after `since_ts`."""
    path = Path(path)
    if not path.is_file():
        return []
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
        extra = ", text_chars, text_sha256" if "text_sha256" in have else ", NULL, NULL"
        extra += ", output, details" if "output" in have else ", NULL, NULL"
        query = ("SELECT ts, source, model_version, text, label, score, probabilities"
                 f"{extra} FROM predictions")
        params: list[Any] = []
        if since_ts is not None:
            query += " WHERE ts > ?"
            params.append(since_ts)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(int(limit))
        rows: Iterable[tuple] = conn.execute(query, params).fetchall()
    finally:
        conn.close()
    return [
        LoggedPrediction(ts, src, ver, text, label, score, json.loads(probs), chars, digest,
                         out, None if det is None else json.loads(det))
        for ts, src, ver, text, label, score, probs, chars, digest, out, det in rows
    ]


def count_predictions(path: str | Path) -> int:
    path = Path(path)
    if not path.is_file():
        return 0
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
    finally:
        conn.close()
