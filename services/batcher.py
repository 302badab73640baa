"""In-process continuous batcher: the `serving.batcher: inprocess` alternative to BentoML's.

BentoML's adaptive batching is reached from `/classify` through BentoML's self-proxy, an extra
in-process HTTP round trip per request (serialisation, middleware, a second pydantic parse). That
costs several milliseconds of event-loop time per request, which caps one worker at a few hundred
requests per second even when the model could do thousands. This batcher feeds the model directly
from the event loop: while a batch runs, new requests queue; when it finishes, everything queued
(up to `max_batch_texts`, requests never split) becomes the next batch. An idle model starts at
once, so a lone request waits for nothing; under load, batches grow by themselves.

Requests that waited longer than `max_latency_ms` before their batch started are refused
(`Overloaded` -> 503), the same contract as BentoML's batcher.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence


class Overloaded(RuntimeError):
    pass


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], list[Any]],
        max_batch_texts: int = 256,
        max_latency_ms: float = 1000.0,
        stats: Optional[dict[str, int]] = None,
    ):
        self._run_batch = run_batch
        self.max_batch_texts = max(1, int(max_batch_texts))
        self.max_latency_s = max_latency_ms / 1000.0
        self.stats = stats if stats is not None else {}
        self._queue: deque[tuple[Any, asyncio.Future, float]] = deque()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="labelloop-batch")

    async def submit(self, texts: Any) -> Any:
        """Queue one request (anything with a len(): its number of texts); await its result."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        fut: asyncio.Future = loop.create_future()
        self._queue.append((texts, fut, time.monotonic()))
        self._wake.set()
        return await fut

    def _take(self) -> list[tuple[Any, asyncio.Future, float]]:
        batch, n = [], 0
        now = time.monotonic()
        while self._queue:
            texts, fut, t0 = self._queue[0]
            if fut.done():  # the client went away
                self._queue.popleft()
                continue
            if now - t0 > self.max_latency_s:
                self._queue.popleft()
                fut.set_exception(Overloaded(
                    f"waited {1000 * (now - t0):.0f} ms for the model "
                    f"(serving.max_latency_ms={1000 * self.max_latency_s:.0f})"))
                continue
            if batch and n + len(texts) > self.max_batch_texts:
                break
            self._queue.popleft()
            batch.append((texts, fut, t0))
            n += len(texts)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._run_batch, [b[0] for b in batch])
                except Exception as exc:  # noqa: BLE001 - hand the error to every caller
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut, _), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
