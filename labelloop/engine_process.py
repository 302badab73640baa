"""The generation engine in a process of its own (`serving.generation.engine_process`).

Why: in the API worker the engine thread and the event loop share one GIL. Every torch call the
engine makes drops the GIL and must win it back from the thread that runs HTTP and the
server-sent events; the eager prefill of newly arrived requests is hundreds of such calls. On an
H200 with SmolLM2-135M, 64 concurrent streaming requests made 8,568 tokens/s through the service
against 14,320 for the same engine in-process without HTTP, and the p99 time to first token at
half of peak was 1,443 ms (targets: 10,000 tokens/s, 300 ms; docs/benchmarks.md, "Generation
serving"). In a process of its own the engine has a GIL of its own.

What stays in the API process: the tokenizer, the bundle's metadata and the chat formatting
(`Generator.encode`, `TextStream`): requests are encoded and decoded there, token ids cross.
The child (a `multiprocessing` spawn: a fresh interpreter, so no CUDA state is inherited and
the API process never creates a CUDA context) loads the model and runs the unchanged `Engine`.

Protocol, one duplex pipe:
  parent -> child  ("submit", [(rid, prompt_ids, sampling, stream), ...])
                   ("cancel", rid)            GenRequest.cancel(), e.g. the client went away
                   ("close",)                 retired and idle: finish and exit
  child -> parent  ("ready", describe) | ("failed", "what went wrong")   once, after loading
                   ("update", [(rid, new_tokens, finish_reason, error, t_first), ...], progress)
The child sends **one update per engine iteration**, for the requests the engine would wake
(first token, finished, or `stream_interval_s` since the last wake-up; `Engine._notify`), never
one per token; `progress` carries the engine's stats. One receiver thread in the API process
applies it to the `GenRequest`s and wakes their waiters as the in-thread engine does.

`submit` answers synchronously (no round trip): the proxy counts the sequences it submitted that
have no token yet (an upper bound of the engine's waiting queue) for `Overloaded`, checks the
lengths for `ValueError`, and decides itself when a retired engine is closed (`EngineClosed`:
the handler resubmits to the new version), so nothing is lost between the processes.

A child that dies (crash, out of memory, killed) fails every request it held with `EngineDied`
(HTTP 503 with the reason), is logged once, and a new child is started for the same version;
meanwhile `submit` raises `EngineUnavailable` (503, Retry-After) and /readyz answers 503. The
child exits when its pipe closes (the API process is gone) or its parent changes.

Spawning runs the parent's main module again in the child, as `__mp_main__` (multiprocessing's
rule): the BentoML worker's is safe to import (0.06 s); a script that starts an engine process
needs the `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import weakref
from typing import Any, Optional, Sequence

from labelloop.generation_engine import (Engine, EngineClosed, EngineDied, EngineUnavailable,
                                         GenRequest, Overloaded, Sampling, check_lengths,
                                         wake)

logger = logging.getLogger("labelloop.serving")

START_TIMEOUT_S = 600.0  # spawn, imports, weights, parity check, warm-up (a busy 2-core box)
RESTART_DELAY_S = (1.0, 60.0)  # a child that keeps dying is restarted at most once a minute


_LIVE: "weakref.WeakSet[EngineProcess]" = weakref.WeakSet()


@atexit.register  # before multiprocessing's own exit hook, which would wait for the children
def _close_all() -> None:
    for engine in list(_LIVE):
        engine.stop()


class EngineError(RuntimeError):
    """A failure the engine reported from its process (a failing step): its type and text."""


def _exit_text(code: Optional[int]) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


class EngineProcess:
    """Proxy for an `Engine` running in a spawned process; what handlers use of an `Engine`."""

    def __init__(self, bundle_dir: str, device: str, engine_args: dict[str, Any],
                 warm_up_ids: Sequence[int] = (), start_timeout_s: float = START_TIMEOUT_S):
        self.name = engine_args["name"]
        self.max_seq, self.max_waiting = int(engine_args["max_seq"]), int(engine_args["max_waiting"])
        self.stream_interval_s = float(engine_args["stream_interval_s"])
        switch = engine_args.get("switch_interval_s")
        if switch:  # the receiver thread here must also win the GIL from the event loop
            sys.setswitchinterval(min(sys.getswitchinterval(), float(switch)))
        # The child's own waiting limit is the proxy's (checked here, synchronously).
        self._spec = (str(bundle_dir), device, {**engine_args, "max_waiting": 2**62},
                      list(warm_up_ids))
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()  # the state below and every write to the pipe
        self._reqs: dict[int, GenRequest] = {}
        self._queued: set[int] = set()  # submitted, no token yet: the waiting sequences
        self._ids = itertools.count()
        self._retired = self._closed = False
        self._grace_s = 1.0
        self._idle_since = time.monotonic()
        self._unavailable: Optional[str] = None  # why submit is refused (the child died)
        self._info: dict[str, Any] = {}
        self.stats: dict[str, int] = {}
        self.restarts = 0
        self._proc, self._conn = self._spawn()
        # Writes to the pipe go through one sender thread: a handler (the event loop) never
        # waits on the pipe, which a child that stops reading (busy, frozen) would fill.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                        name=f"generation-{self.name}-sender")
        self._sender.start()
        self._receiver = threading.Thread(target=self._receive, daemon=True,
                                          name=f"generation-{self.name}-receiver")
        self._receiver.start()
        _LIVE.add(self)

    # ---- what handlers use (the Engine interface) ---------------------------------------------
    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def fallback_reason(self) -> Optional[str]:
        return self._info.get("fallback_reason")

    @property
    def parity_error(self) -> Optional[float]:
        return self._info.get("parity_error")

    @property
    def busy(self) -> dict[str, int]:
        # counted here: requests in the pipe count as waiting, and a frozen child shows its load
        with self._lock:
            return {"active": len(self._reqs) - len(self._queued), "waiting": len(self._queued)}

    @property
    def ready(self) -> bool:
        return self._unavailable is None and not self._closed

    def describe(self) -> dict[str, Any]:
        return {**self._info, "stats": dict(self.stats), **self.busy,
                "engine_restarts": self.restarts}

    def submit(self, requests: Sequence[GenRequest]) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosed(f"engine {self.name} is closed")
            if self._unavailable:
                raise EngineUnavailable(self._unavailable)
            if len(self._queued) + len(requests) > self.max_waiting:
                raise Overloaded(f"{len(self._queued)} sequences are waiting "
                                 f"(serving.generation.max_waiting={self.max_waiting})")
            check_lengths(requests, self.max_seq)
            batch = []
            for r in requests:
                rid = next(self._ids)
                self._reqs[rid] = r
                self._queued.add(rid)
                r.on_cancel = lambda rid=rid: self._cancel(rid)
                batch.append((rid, r.prompt_ids, r.sampling, r.stream))
            self._idle_since = time.monotonic()
            self._send(("submit", batch))

    def retire(self, grace_s: float = 1.0) -> None:
        """Finish what was submitted (and what comes within `grace_s` of the last request),
        then stop the child: its process exits, which frees the device memory."""
        with self._lock:
            self._retired, self._grace_s = True, grace_s
            self._idle_since = time.monotonic()

    # Only the receiver thread waits for (reaps) the child: two threads joining one process can
    # leave one of them with no exit code. Others signal the child and wait for the receiver.
    def close(self) -> None:
        self.retire(0.0)
        self._receiver.join(10)
        if self._receiver.is_alive():  # still busy after 10 s: it goes anyway
            self._proc.kill()
            self._receiver.join(10)

    def stop(self) -> None:
        """At once, without waiting for requests (the API process exits)."""
        with self._lock:
            self._retired = self._closed = True
            self._send(("close",))  # the child cancels what it holds and exits
        self._receiver.join(5)
        if self._receiver.is_alive():
            self._proc.kill()
            self._receiver.join(5)

    # ---- the pipe -------------------------------------------------------------------------------
    def _send(self, msg: tuple) -> None:
        """Under self._lock: queued for the sender thread, in order, with the pipe of the child
        it is meant for (a message for a dead child is not sent to its successor). A dead child
        is noticed by the receiver (end of file), which fails what it held: a request
        registered here before that is failed with the others."""
        self._outbox.put((self._conn, msg))

    def _send_loop(self) -> None:
        while True:
            conn, msg = self._outbox.get()
            if conn is None:
                return
            try:
                conn.send(msg)
            except (OSError, ValueError):  # closed: that child is gone
                pass

    def _cancel(self, rid: int) -> None:
        with self._lock:
            if rid in self._reqs:
                self._send(("cancel", rid))

    def _spawn(self):
        """Start a child and wait until it has loaded and warmed up the model."""
        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=child_main, args=(child_conn, *self._spec, os.getpid()),
                           name=f"labelloop-engine-{self.name}", daemon=True)
        t0 = time.monotonic()
        proc.start()
        child_conn.close()  # the child holds the only other end: its death is an EOF here
        try:
            while True:
                if conn.poll(1.0):
                    msg = conn.recv()
                    if msg[0] != "ready":
                        raise RuntimeError(f"the generation engine process could not start: {msg[1]}")
                    info = dict(msg[1])
                    self.stats = info.pop("stats")
                    info.pop("active"), info.pop("waiting")  # counted here (busy)
                    self._info = info
                    logger.info("generation engine for version %s runs in process %d (started in "
                                "%.1f s)", self.name.lstrip("v"), proc.pid, time.monotonic() - t0)
                    return proc, conn
                if time.monotonic() - t0 > self._start_timeout_s:
                    raise RuntimeError(f"the generation engine process did not start in "
                                       f"{self._start_timeout_s:.0f} s")
        except (EOFError, OSError):
            proc.join(5)
            raise RuntimeError(f"the generation engine process {_exit_text(proc.exitcode)} "
                               "while loading the model (its log lines say why)") from None
        except BaseException:
            proc.kill()
            proc.join(5)
            conn.close()
            raise

    # ---- the receiver thread ----------------------------------------------------------------------
    def _receive(self) -> None:
        try:
            self._receive_until_closed()
        finally:
            self._outbox.put((None, None))  # the sender thread ends too

    def _receive_until_closed(self) -> None:
        while True:
            try:
                if self._conn.poll(0.5):
                    msg = self._conn.recv()
                    if msg[0] == "update":
                        self._apply(msg[1], msg[2])
            except (EOFError, OSError):
                if not self._child_died():
                    return
            except Exception:  # noqa: BLE001 - a bad message must not stop the receiver
                logger.exception("generation engine %s: a message from the engine process "
                                 "could not be applied", self.name)
            if self._retired and self._close_if_idle():
                return

    def _apply(self, updates: list, progress: dict) -> None:
        woken = []
        with self._lock:
            for rid, new, finish, error, t_first in updates:
                req = self._reqs.get(rid)
                if req is None:
                    continue
                self._queued.discard(rid)
                if finish is not None:
                    del self._reqs[rid]
                    if not self._reqs:
                        self._idle_since = time.monotonic()
                woken.append((req, new, finish, error, t_first))
            self.stats = progress["stats"]
            self._info["cuda_graphs"] = progress["cuda_graphs"]
        now = time.perf_counter()
        for req, new, finish, error, t_first in woken:
            req.tokens.extend(new)  # tokens before the finish: a waiter that sees done has all
            if req.t_first is None:
                req.t_first = t_first  # the child's clock: perf_counter is system-wide
            if error is not None:
                req.error = EngineError(error)
            if finish is not None:
                req.finish_reason = finish
            req.t_woken = now
            req.wakeups += 1
        wake([w[0] for w in woken])

    def _fail_held(self, error: BaseException) -> int:
        with self._lock:
            failed = list(self._reqs.values())
            self._reqs.clear()
            self._queued.clear()
        for req in failed:
            req.error = error
            req.finish_reason = "error"
        wake(failed)
        return len(failed)

    def _child_died(self) -> bool:
        """Fail what the dead child held; start a new one unless retired. False: stop receiving."""
        proc = self._proc
        proc.join(5)
        if self._closed:  # stopped on purpose (stop(): the API process exits)
            self._fail_held(EngineDied("the service is stopping"))
            return False
        what = f"the generation engine process of version {self.name.lstrip('v')} " \
               f"(pid {proc.pid}) {_exit_text(proc.exitcode)}"
        with self._lock:
            if not self._retired:
                self._unavailable = f"{what}; a new one is starting"
        failed = self._fail_held(EngineDied(what))
        self._conn.close()
        if self._retired:
            with self._lock:
                self._closed = True
            logger.error("%s; %d requests failed", what, failed)
            return False
        logger.error("%s; %d requests failed; starting a new one", what, failed)
        delay = RESTART_DELAY_S[0]
        while not self._retired:
            try:
                proc, conn = self._spawn()
            except Exception as exc:  # noqa: BLE001 - keep trying, slower and slower
                logger.error("generation engine for version %s: a new process failed (%s); "
                             "trying again in %.0f s", self.name.lstrip("v"), exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, RESTART_DELAY_S[1])
                continue
            with self._lock:
                if not self._retired:
                    self._proc, self._conn = proc, conn
                    self._unavailable = None
                    self.restarts += 1
                    return True
            proc.kill()  # retired or stopped while it started: not needed any more
            proc.join(5)
            conn.close()
        with self._lock:
            self._closed = True
        return False

    def _close_if_idle(self) -> bool:
        with self._lock:
            if self._reqs or time.monotonic() - self._idle_since < self._grace_s:
                return False
            self._closed = True  # from now on submit raises EngineClosed: nothing is lost
            self._send(("close",))
        self._proc.join(30)
        if self._proc.is_alive():
            logger.warning("generation engine process %d did not exit; killing it", self._proc.pid)
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        return True


# ---- the child process --------------------------------------------------------------------------

class _ChildEngine(Engine):
    """The engine, unchanged, except that the news of an iteration goes into one message."""

    def __init__(self, conn, send_lock: threading.Lock, *args, **kwargs):
        self.conn, self.send_lock = conn, send_lock
        self.live: dict[int, GenRequest] = {}  # rid -> request, until finished
        super().__init__(*args, **kwargs)

    def progress(self) -> dict[str, Any]:
        dec = self.decoder
        return {"stats": dict(self.stats), "cuda_graphs": len(dec._graphs) if dec is not None else 0}

    def _deliver(self, woken: list[GenRequest]) -> None:
        out = []
        for req in woken:
            rid = getattr(req, "rid", None)
            if rid is None:  # the child's own warm-up request
                wake([req])
                continue
            n = len(req.tokens)
            error = None if req.error is None else f"{type(req.error).__name__}: {req.error}"
            out.append((rid, req.tokens[req.sent:n], req.finish_reason, error, req.t_first))
            req.sent = n
            if req.done:
                self.live.pop(rid, None)
        if out:
            send(self.conn, self.send_lock, ("update", out, self.progress()))


def send(conn, lock: threading.Lock, msg: tuple) -> None:
    try:
        with lock:
            conn.send(msg)
    except OSError:  # the API process is gone: the main thread notices and exits
        pass


def child_main(conn, bundle_dir: str, device: str, engine_args: dict, warm_up_ids: list,
               parent_pid: int) -> None:
    """The engine process: load, warm up, say ready, then serve the pipe until told to close,
    the pipe closes, or the parent changes (the API process was killed)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s engine[{os.getpid()}] "
                        "%(levelname)s %(name)s: %(message)s")
    # Its lifetime is the API process's: `bentoml serve` stopped with Ctrl+C or SIGTERM signals
    # the whole process group, and a child that died of it would look like a crash (and be
    # restarted) while the API process shuts down. The API process closes it (atexit); if the
    # API process is killed, the pipe closes or the parent changes (below), and it exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = threading.Lock()
    try:
        from labelloop.generation.bundle import load_generation_bundle
        from labelloop.generation_engine import eos_ids

        if device.startswith("cuda:"):  # the API worker's GPU (serving.gpus): current here too
            import torch

            torch.cuda.set_device(device)
        loaded = load_generation_bundle(bundle_dir, device=device)
        engine = _ChildEngine(conn, lock, loaded.model, loaded.tokenizer,
                              eos_ids(loaded.model, loaded.tokenizer), **engine_args)
        del loaded
        if warm_up_ids:  # first steps allocate (and capture a graph): not on a client
            warm = GenRequest(warm_up_ids, Sampling(max_new_tokens=4, ignore_eos=True),
                              blocking=True)
            engine.submit([warm])
            warm.wait(START_TIMEOUT_S)
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        logging.getLogger("labelloop.serving").exception("the engine process could not start")
        send(conn, lock, ("failed", f"{type(exc).__name__}: {exc}"))
        return
    send(conn, lock, ("ready", engine.describe()))
    try:
        while True:
            if not conn.poll(0.5):
                if os.getppid() != parent_pid:
                    break
                continue
            msg = conn.recv()
            if msg[0] == "submit":
                reqs = []
                for rid, ids, sampling, stream in msg[1]:
                    req = GenRequest(ids, sampling, stream=stream, blocking=True)
                    req.rid, req.sent = rid, 0
                    engine.live[rid] = req
                    reqs.append(req)
                try:
                    engine.submit(reqs)
                except Exception as exc:  # noqa: BLE001 - the proxy checked; fail them anyway
                    for req in reqs:
                        req.error, req.finish_reason = exc, "error"
                    engine._deliver(reqs)
            elif msg[0] == "cancel":
                req = engine.live.get(msg[1])
                if req is not None:
                    req.cancel()
            elif msg[0] == "close":
                break
    except (EOFError, OSError):
        pass  # the API process is gone
    for req in list(engine.live.values()):  # nobody waits for them any more
        req.cancel()
    engine.close()
