"""The training progress bar: a live bar in a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns. In a terminal that is one line updating in place;
written to a file or a pipe (CI, `kubectl logs`, `make demo > demo.log`, a ZenML orchestrator's
step logs) the redraws pile up into one line of thousands of characters that shows only at the
end. So when the stream is not a terminal, `step_bar` prints whole lines instead: one when the
fine-tune starts (a log shows that it did, and how many steps it has), one per tenth of the
steps or per minute, whichever comes first (a 6-hour CPU run would otherwise be silent for 36
minutes), each with the rate and the latest postfix (the loss), and a last one at the end.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Optional, TextIO


class LineProgress:
    """tqdm's interface as the training loops use it (`n`, `update`, `set_postfix`, `close`),
    written as whole lines: `desc: 40/200 steps (20%), 2.6 step/s, loss=0.8186`."""

    def __init__(self, total: int, desc: str, stream: TextIO, lines: int = 10, unit: str = "step",
                 every_seconds: float = 60.0):
        self.total, self.desc, self.stream, self.unit = max(0, int(total)), desc, stream, unit
        self.every = max(1, math.ceil(self.total / max(1, lines))) if self.total else 1
        self.every_seconds = every_seconds
        self.n = 0
        self._next = self.every
        self._postfix: dict[str, str] = {}
        self._start = self._last = time.perf_counter()
        self._closed = False
        self._write()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.total:
            return  # the last line is close()'s
        if self.n >= self._next or time.perf_counter() - self._last >= self.every_seconds:
            self._write()
            self._next = (self.n // self.every + 1) * self.every

    def set_postfix(self, refresh: bool = True, **values) -> None:  # noqa: ARG002 - tqdm's signature
        self._postfix = {key: str(value) for key, value in values.items()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(final=True)

    def _write(self, final: bool = False) -> None:
        self._last = time.perf_counter()
        elapsed = self._last - self._start
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        rate = ""
        if elapsed > 0 and self.n:
            per_second = self.n / elapsed
            # Slow steps (a CPU fine-tune of an LM) read as seconds per step, not "0.0 step/s".
            rate = f", {per_second:.1f} {self.unit}/s" if per_second >= 0.5 else \
                f", {elapsed / self.n:.1f} s/{self.unit}"
        took = f" in {elapsed:.1f}s" if final else ""
        post = "".join(f", {key}={value}" for key, value in self._postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s{share}{took}{rate}{post}",
              file=self.stream, flush=True)


def step_bar(total: int, desc: str, enabled: bool = True, stream: Optional[TextIO] = None):
    """A bar of `total` steps: tqdm in a terminal, `LineProgress` elsewhere, silent if not
    `enabled`."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=stream)
    return LineProgress(total, desc, stream)
