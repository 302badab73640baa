"""What the feedback loop is doing and what it did: one row per turn, in `<data_dir>/loop.sqlite`.

A turn writes its stage and progress as it goes (sync, evaluate, decide, train, promote, reload,
push) and its outcome at the end: promoted or not, why, with the scores. The service's status
page, the webhook's answer to "Start training" and the Label Studio project's instructions read
it, so an annotator can follow a run without a terminal. A turn killed midway stays `running` in
the table; readers check the project's feedback lock (labelloop.trigger) and call it
`interrupted` when nobody holds it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

from labelloop.settings import Settings

STAGES = ("sync", "evaluate", "decide", "train", "promote", "reload", "push")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project     TEXT NOT NULL,
    trigger     TEXT,
    state       TEXT NOT NULL,          -- running | done | failed
    stage       TEXT,
    progress    REAL NOT NULL DEFAULT 0,
    started_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    ended_at    REAL,
    outcome     TEXT,                   -- promoted | kept | no-retrain | failed
    summary     TEXT,                   -- one readable line
    details     TEXT                    -- JSON: decision, scores, timings
);
"""


def db_path(settings: Settings) -> Path:
    return settings.data_path / "loop.sqlite"


def _connect(settings: Settings) -> sqlite3.Connection:
    path = db_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)
    return conn


def _proj(project: Any) -> str:
    return "all" if project is None else str(project)


def start_turn(settings: Settings, project: Any, trigger: str) -> int:
    now = time.time()
    with closing(_connect(settings)) as conn:
        cur = conn.execute(
            "INSERT INTO turns (project, trigger, state, stage, progress, started_at, updated_at)"
            " VALUES (?, ?, 'running', 'sync', 0, ?, ?)", (_proj(project), trigger, now, now))
        return int(cur.lastrowid)


def set_stage(settings: Settings, turn: Optional[int], stage: str, progress: Optional[float] = None,
              note: Optional[str] = None) -> None:
    """Record the turn's stage; progress defaults to the stage's place in STAGES."""
    if turn is None:
        return
    if progress is None:
        progress = STAGES.index(stage) / len(STAGES) if stage in STAGES else 0.0
    with closing(_connect(settings)) as conn:
        conn.execute("UPDATE turns SET stage=?, progress=?, updated_at=?"
                     + (", summary=?" if note is not None else "") + " WHERE id=?",
                     (stage, float(progress), time.time(), *([note] if note is not None else []),
                      turn))


def finish_turn(settings: Settings, turn: Optional[int], outcome: str, summary: str,
                details: Optional[dict] = None, failed: bool = False) -> None:
    if turn is None:
        return
    now = time.time()
    with closing(_connect(settings)) as conn:
        conn.execute(
            "UPDATE turns SET state=?, stage='done', progress=1, updated_at=?, ended_at=?, "
            "outcome=?, summary=?, details=? WHERE id=?",
            ("failed" if failed else "done", now, now, outcome, summary,
             json.dumps(details or {}, default=str), turn))


def turns(settings: Settings, project: Any = None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest turns, newest first; `state` is `interrupted` for a dead running turn."""
    if not db_path(settings).is_file():
        return []
    from labelloop.trigger import is_running

    query, params = "SELECT * FROM turns", []
    if project is not None:
        query += " WHERE project=?"
        params.append(_proj(project))
    with closing(_connect(settings)) as conn:
        rows = [dict(r) for r in conn.execute(query + " ORDER BY id DESC LIMIT ?",
                                              (*params, int(limit)))]
    alive: dict[str, bool] = {}
    for r in rows:
        r["details"] = json.loads(r["details"]) if r.get("details") else {}
        if r["state"] == "running":
            key = r["project"]
            if key not in alive:
                alive[key] = is_running(settings, None if key == "all" else key)
            if not alive[key]:
                r["state"] = "interrupted"
    return rows


def turn_count(settings: Settings) -> int:
    if not db_path(settings).is_file():
        return 0
    with closing(_connect(settings)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0])


def describe(turn: Optional[dict[str, Any]]) -> str:
    """One line for people: what the turn is doing, or how it ended."""
    if not turn:
        return "no training run yet"
    if turn["state"] == "running":
        return (f"training run {turn['id']} is running: stage {turn['stage']} "
                f"({turn['progress']:.0%}), started {time.strftime('%H:%M:%S', time.localtime(turn['started_at']))}")
    if turn["state"] == "interrupted":
        return f"training run {turn['id']} was interrupted at stage {turn['stage']}"
    took = (turn["ended_at"] or turn["updated_at"]) - turn["started_at"]
    return f"training run {turn['id']} ended after {took:.0f} s: {turn['summary']}"
