"""The worker process watches its parent: a worker whose `bentoml serve` parent died exits.

BentoML's parent process (the arbiter) passes the listening socket to its workers and restarts
them when they die. Killed with SIGKILL it cannot stop them, and an orphaned worker keeps the
port and answers /readyz 200 with nothing supervising it: restarting `bentoml serve` then fails
with "Address already in use". So each worker notices when its parent changes (it is re-parented
to init or a subreaper) and exits. Polling `os.getppid()` is used rather than PR_SET_PDEATHSIG:
that signal fires when the *thread* that spawned the worker exits, not the process, and it
depends on how the process manager spawns; polling twice a second costs nothing measurable.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Optional

logger = logging.getLogger("labelloop.serving")

_PARENT = os.getppid()  # at import, in the worker: the process that started it


def parent_alive() -> bool:
    """Whether the process that started this one is still its parent (readiness uses it)."""
    return os.getppid() == _PARENT


def watch_parent(interval_s: float = 0.5, on_orphan: Optional[Callable[[], None]] = None,
                 exit_code: int = 1) -> threading.Thread:
    """Start a daemon thread that exits the process (after `on_orphan`, e.g. a bounded flush of
    the prediction log) once the parent is gone."""

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval_s):
            if parent_alive():
                continue
            logger.error("the serving parent process (pid %d) is gone; worker %d exits so the "
                         "port is freed and a restart can bind it", _PARENT, os.getpid())
            try:
                if on_orphan is not None:
                    on_orphan()
            finally:
                os._exit(exit_code)  # no graceful shutdown: nobody supervises it any more

    thread = threading.Thread(target=loop, name="parent-watch", daemon=True)
    thread.start()
    return thread
