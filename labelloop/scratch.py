"""Scratch directories that a killed process cannot leak for ever.

Each one is `<data_dir>/tmp/<kind>-<pid>-<random>`: the owner's pid is in the name, so the next
process to make one removes those whose owner is gone (kill -9 included), and nothing else: a
directory of a process that is still running is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from labelloop.processes import alive
from labelloop.settings import Settings


def clean_stale(settings: Settings) -> list[Path]:
    """Remove scratch directories whose owner process is gone; returns what was removed."""
    root = settings.data_path / "tmp"
    removed = []
    for path in root.glob("*-*-*") if root.is_dir() else []:
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make(settings: Settings, kind: str) -> Path:
    """A new scratch directory for this process (stale ones of dead processes go first)."""
    clean_stale(settings)
    root = settings.data_path / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=root))
