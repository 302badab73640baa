"""Continuous batching for a generation bundle: many requests share one device, token by token.

One engine thread owns the model. Each iteration it
1. admits waiting requests into free slots (one prefill call for all of them, at most
   `prefill_tokens` prompt tokens, at least one request), which yields their first token;
2. decodes one token for every occupied slot (`SlotDecoder.decode`, a CUDA graph per shape);
3. samples (greedy, or temperature/top-p per request), checks end of sequence, `max_new_tokens`
   and stop strings, frees the slots of finished requests, and wakes the waiting handlers
   (streaming ones every step, the others when they finish: one `call_soon_threadsafe` per
   event loop per step).
So a request joins between two decoding steps and a long generation never holds up a short
one. transformers' own continuous batching measured 5.6k tokens/s on the H200 and stalled when
streaming; padded `generate` batches make every request wait for the longest (docs/serving.md).

Models the slot decoder cannot run (not Llama-family, checked at load against the model's own
forward pass) are served by `generate` on batches of waiting requests instead: correct, slower,
no streaming token by token.

An engine serves one model version. A hot reload starts a new engine and `retire()`s the old
one: it finishes what it was given, then frees its memory; a handler that reaches a closed
engine (`EngineClosed`) resubmits to the new one, so a response never mixes versions.

With `serving.generation.engine_process` the engine runs in a process of its own and the
handlers use a proxy with the same interface (labelloop/engine_process.py): `_deliver` is where
an iteration's news leave the engine.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

logger = logging.getLogger("labelloop.serving")


class EngineClosed(RuntimeError):
    """This engine was retired and has stopped: submit to the current one."""


class Overloaded(RuntimeError):
    """More sequences waiting than `max_waiting`."""


class EngineUnavailable(RuntimeError):
    """No engine process right now (its process died and a new one is starting): retry."""


class EngineDied(RuntimeError):
    """The engine's process exited while it held this request (labelloop.engine_process)."""


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # fixed output lengths (benchmarks)


class GenRequest:
    """One prompt being generated. The engine thread appends to `tokens` and sets
    `finish_reason` ('stop' | 'length' | 'cancelled' | 'error'), then wakes the waiter."""

    def __init__(self, prompt_ids: Sequence[int], sampling: Sampling, stream: bool = False,
                 blocking: bool = False):
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.stream = stream  # woken every step (else only when finished)
        self.tokens: list[int] = []
        self.finish_reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_first: Optional[float] = None
        self.t_woken: Optional[float] = None  # last wake-up of a streaming waiter
        self.wakeups = 0  # how often its waiter was woken (tokens / wakeups: tokens per event)
        # Set by an engine in another process (labelloop.engine_process): a cancel must reach it.
        self.on_cancel: Optional[Any] = None
        # Waited for with `await changed()` on the event loop that created it, or with `wait()`
        # (`blocking`, or created outside any event loop).
        loop = None
        if not blocking:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        self._loop: Optional[asyncio.AbstractEventLoop] = loop
        self._event: Any = asyncio.Event() if loop is not None else threading.Event()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    async def changed(self) -> None:
        """Wait until new tokens arrived or it finished (asyncio callers)."""
        await self._event.wait()
        self._event.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until finished (callers without an event loop)."""
        while not self.done:
            if not self._event.wait(timeout):
                return False
            self._event.clear()
        return True

    def cancel(self) -> None:
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()


def sample(logits: torch.Tensor, temps: Sequence[float], top_ps: Sequence[float]) -> list[int]:
    """Next token per row: argmax where the temperature is 0, else a draw from the softmax at
    that temperature restricted to the smallest set of tokens whose probability reaches top_p."""
    greedy = logits.argmax(-1)
    if not any(temps):
        return greedy.tolist()
    dev = logits.device
    t = torch.tensor(temps, device=dev, dtype=torch.float32)
    probs = torch.softmax(logits / t.clamp_min(1e-5)[:, None], dim=-1)
    if any(p < 1.0 for p in top_ps):
        p = torch.tensor(top_ps, device=dev, dtype=torch.float32)
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        sorted_p[(sorted_p.cumsum(-1) - sorted_p) >= p[:, None]] = 0.0  # always keeps the top
        drawn = idx.gather(-1, torch.multinomial(sorted_p, 1))[:, 0]
    else:
        drawn = torch.multinomial(probs, 1)[:, 0]
    return torch.where(t == 0, greedy, drawn).tolist()


def _wake(events) -> None:
    for e in events:
        e.set()


def wake(reqs: Sequence[GenRequest]) -> None:
    """Wake the waiters of `reqs`: a blocking waiter's event directly, the streams of one event
    loop with one `call_soon_threadsafe` (one GIL hand-over to the loop, not one per request)."""
    by_loop: dict[Any, list] = {}
    for req in reqs:
        if req._loop is None:
            req._event.set()
        else:
            by_loop.setdefault(req._loop, []).append(req._event)
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_wake, events)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def check_lengths(requests: Sequence[GenRequest], max_seq: int) -> None:
    """What every engine refuses before queueing: an empty prompt, or one that cannot fit its
    new tokens in `max_seq` (ValueError; the handlers check the limits first, with 4xx)."""
    for r in requests:
        if not r.prompt_ids or len(r.prompt_ids) + r.sampling.max_new_tokens > max_seq:
            raise ValueError(f"prompt of {len(r.prompt_ids)} tokens plus "
                             f"{r.sampling.max_new_tokens} new ones exceeds {max_seq}")


class Engine:
    def __init__(self, model, tokenizer, eos_ids: Sequence[int], slots: int, max_seq: int,
                 max_waiting: int = 4096, prefill_tokens: int = 8192, cuda_graphs: bool = True,
                 name: str = "engine", stream_interval_s: float = 0.0,
                 switch_interval_s: Optional[float] = None, admit_interval_s: float = 0.0,
                 prefill_graphs: bool = True):
        from labelloop.slot_decoder import SlotDecoder, Unsupported

        self.model, self.tokenizer, self.name = model, tokenizer, name
        # A streaming waiter is woken for its first token, when it finishes, and otherwise at
        # most every `stream_interval_s`: what the engine made meanwhile goes out as one event.
        self.stream_interval_s = float(stream_interval_s)
        # While requests are decoding, new ones are admitted (one prefill for all that arrived)
        # at most every `admit_interval_s`; an idle engine admits at once. Arrivals one by one
        # each pay a prefill; batching them is a lever for prefills that cost more than a step
        # (eager ones: ~600 kernel launches; docs/benchmarks.md, "Prefill as CUDA graphs").
        # 0: admit at every step.
        self.admit_interval_s = float(admit_interval_s)
        self._last_admit = 0.0
        if switch_interval_s:
            # The engine thread drops the GIL in every torch call and must win it back from
            # the event loop's thread: at CPython's default 5 ms interval a busy loop makes
            # each of those waits up to 5 ms (docs/serving.md, "Generation"). Only lowered.
            sys.setswitchinterval(min(sys.getswitchinterval(), float(switch_interval_s)))
        self.eos = frozenset(int(i) for i in eos_ids)
        self.slots, self.max_seq = int(slots), int(max_seq)
        self.max_waiting, self.prefill_tokens = int(max_waiting), int(prefill_tokens)
        self.decoder = None
        self.fallback_reason: Optional[str] = None
        self.parity_error: Optional[float] = None
        try:
            self.decoder = SlotDecoder(model, self.slots, self.max_seq, cuda_graphs,
                                       prefill_graphs=prefill_graphs)
            # A wrong architecture detail gives differences of order 1; bf16 rounding over
            # tens of layers stays at a few percent of the largest logit.
            self.parity_error = self.decoder.check_parity(
                tokenizer("Hello, how are you?")["input_ids"] or [0])
            tolerance = 1e-3 if self.decoder.dtype == torch.float32 else 0.1
            if self.parity_error > tolerance:
                raise Unsupported(f"its logits differ from the model's own by "
                                  f"{self.parity_error:.3g} (relative)")
        except Unsupported as exc:
            self.decoder = None
            self.fallback_reason = str(exc)
            logger.warning("generation: continuous batching unavailable for this model (%s); "
                           "serving with batched generate()", exc)
        self._pending: deque[GenRequest] = deque()
        self._active: dict[int, GenRequest] = {}
        self._free = list(range(self.slots))  # a heap: the lowest free slot first, so
        self._cond = threading.Condition()    # decode steps cover few rows at low load
        self._retired = self._closed = False
        # the *_s entries: seconds the engine thread spent iterating (busy_s), in prefills and in
        # decoding steps (each with the sampling and the wait for the GPU): where its time goes
        self.stats = {"requests": 0, "tokens": 0, "steps": 0, "prefills": 0, "largest_step": 0,
                      "errors": 0, "busy_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0}
        self._thread = threading.Thread(target=self._run, name=f"generation-{name}", daemon=True)
        self._thread.start()

    # ---- handler side ----------------------------------------------------------------------
    def submit(self, requests: Sequence[GenRequest]) -> None:
        with self._cond:
            if self._closed:
                raise EngineClosed(f"engine {self.name} is closed")
            if len(self._pending) + len(requests) > self.max_waiting:
                raise Overloaded(f"{len(self._pending)} sequences are waiting "
                                 f"(serving.generation.max_waiting={self.max_waiting})")
            check_lengths(requests, self.max_seq)
            self._pending.extend(requests)
            self.stats["requests"] += len(requests)
            self._cond.notify()

    def retire(self, grace_s: float = 1.0) -> None:
        """Finish what was submitted, then stop and free the device memory."""
        self._grace_s = grace_s
        with self._cond:
            self._retired = True
            self._cond.notify()

    def close(self) -> None:
        self.retire(0.0)
        self._thread.join(10)

    @property
    def busy(self) -> dict[str, int]:
        return {"active": len(self._active), "waiting": len(self._pending)}

    @property
    def ready(self) -> bool:
        return not self._closed

    def describe(self) -> dict[str, Any]:
        """What `Generator.info()` (and /metadata) shows of this engine."""
        dec = self.decoder
        return {
            "engine": "continuous batching" if dec is not None else "batched generate()",
            "fallback_reason": self.fallback_reason, "parity_error": self.parity_error,
            "cuda_graphs": len(dec._graphs) if dec is not None else 0,
            "prefill_graphs": dec.pad_prefill if dec is not None else False,
            "kv_cache_mb": round(dec.kv_bytes / 2**20, 1) if dec is not None else 0,
            "stats": dict(self.stats), **self.busy,
        }

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        stream = self.decoder.stream if self.decoder is not None else None
        with torch.cuda.stream(stream) if stream is not None else _nothing():
            while self._wait_for_work():
                try:
                    if self.decoder is None:
                        self._generate_batch()
                    else:
                        self._iterate()
                except Exception as exc:  # noqa: BLE001 - fail these requests, keep serving
                    logger.exception("generation step failed")
                    self.stats["errors"] += 1
                    self._fail_all(exc)
        self.decoder = self.model = None  # frees the cache and weights (retired engine)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self._pending and not self._active:
                if self._retired:
                    # late submissions (a handler that grabbed this version just before the
                    # swap) still get served during the grace period
                    if not self._cond.wait(getattr(self, "_grace_s", 1.0)) and not self._pending:
                        self._closed = True
                        return False
                    continue
                self._cond.wait()
            return True

    def _iterate(self) -> None:
        t0 = time.perf_counter()
        touched: list[GenRequest] = []
        if not (self._active and self.admit_interval_s) or \
                t0 - self._last_admit >= self.admit_interval_s:
            self._admit(touched)
        if touched:  # first tokens go out now, not after this step's decode as well
            self._notify(touched)
            touched = []
        if self._active:
            self._decode(touched)
        self._notify(touched)
        self.stats["busy_s"] += time.perf_counter() - t0

    def _admit(self, touched: list[GenRequest]) -> None:
        new: list[tuple[int, GenRequest]] = []
        budget = self.prefill_tokens
        with self._cond:
            while self._pending and self._free:
                req = self._pending[0]
                if req.cancelled:
                    self._pending.popleft()
                    self._finish(req, "cancelled", touched)
                    continue
                if new and len(req.prompt_ids) > budget:
                    break
                self._pending.popleft()
                budget -= len(req.prompt_ids)
                new.append((heapq.heappop(self._free), req))
        if not new:
            return
        self._last_admit = t0 = time.perf_counter()
        logits = self.decoder.prefill([s for s, _ in new], [r.prompt_ids for _, r in new])
        self.stats["prefills"] += 1
        first = sample(logits, [r.sampling.temperature for _, r in new],
                       [r.sampling.top_p for _, r in new])
        now = time.perf_counter()
        self.stats["prefill_s"] += now - t0
        for (slot, req), tok in zip(new, first):
            req.t_first = now
            self._active[slot] = req
            self._append(slot, req, tok, touched)

    def _decode(self, touched: list[GenRequest]) -> None:
        n = max(self._active) + 1
        ids, pos = [0] * n, [0] * n
        temps, top_ps = [0.0] * n, [1.0] * n
        for slot, req in self._active.items():
            ids[slot] = req.tokens[-1]
            pos[slot] = len(req.prompt_ids) + len(req.tokens) - 1
            temps[slot], top_ps[slot] = req.sampling.temperature, req.sampling.top_p
        t0 = time.perf_counter()
        if any(temps):
            nxt = sample(self.decoder.decode(n, ids, pos), temps, top_ps)
        else:  # greedy: the argmax is part of the step (one transfer of n ids, no logits)
            nxt = self.decoder.decode_greedy(n, ids, pos)
        self.stats["decode_s"] += time.perf_counter() - t0
        self.stats["steps"] += 1
        self.stats["largest_step"] = max(self.stats["largest_step"], len(self._active))
        for slot, req in list(self._active.items()):
            self._append(slot, req, nxt[slot], touched)

    def _append(self, slot: int, req: GenRequest, tok: int, touched: list[GenRequest]) -> None:
        s = req.sampling
        if req.cancelled:
            return self._release(slot, req, "cancelled", touched)
        if tok in self.eos and not s.ignore_eos:
            return self._release(slot, req, "stop", touched)
        req.tokens.append(tok)
        self.stats["tokens"] += 1
        if s.stop and _hits_stop(self.tokenizer, req.tokens, s.stop):
            return self._release(slot, req, "stop", touched)
        if len(req.tokens) >= s.max_new_tokens or \
                len(req.prompt_ids) + len(req.tokens) >= self.max_seq:
            return self._release(slot, req, "length", touched)
        if req.stream:
            touched.append(req)

    def _release(self, slot: int, req: GenRequest, reason: str, touched) -> None:
        del self._active[slot]
        heapq.heappush(self._free, slot)
        self._finish(req, reason, touched)

    @staticmethod
    def _finish(req: GenRequest, reason: str, touched) -> None:
        req.finish_reason = reason
        touched.append(req)

    def _notify(self, touched: list[GenRequest]) -> None:
        woken: list[GenRequest] = []
        now, interval = time.perf_counter(), self.stream_interval_s
        for req in touched:
            if req.t_woken == now or (not req.done and req.t_woken is not None
                                      and now - req.t_woken < interval):
                continue  # woken again at a later step, with the tokens of this one
            req.t_woken = now
            req.wakeups += 1
            woken.append(req)
        if woken:
            self._deliver(woken)

    def _deliver(self, woken: list[GenRequest]) -> None:
        """Hand this iteration's news to the waiters (an engine in its own process sends them
        to the API process instead: labelloop.engine_process)."""
        wake(woken)

    def _fail_all(self, exc: BaseException) -> None:
        touched: list[GenRequest] = []
        with self._cond:
            failed = list(self._active.values()) + list(self._pending)
            self._pending.clear()
            for slot in list(self._active):
                heapq.heappush(self._free, slot)
            self._active.clear()
        for req in failed:
            req.error = exc
            self._finish(req, "error", touched)
        self._notify(touched)

    def _generate_batch(self) -> None:
        """Fallback: one `generate` call for the waiting requests that share sampling settings."""
        with self._cond:
            first = self._pending.popleft()
            group = [first]
            keep: deque[GenRequest] = deque()
            while self._pending and len(group) < self.slots:
                r = self._pending.popleft()
                (group if r.sampling == first.sampling else keep).append(r)
            self._pending.extendleft(reversed(keep))
        s = first.sampling
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        longest = max(len(r.prompt_ids) for r in group)
        dev = next(self.model.parameters()).device
        ids = torch.full((len(group), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(group):  # left-padded, as generate expects
            ids[i, longest - len(r.prompt_ids):] = torch.as_tensor(r.prompt_ids)
            mask[i, longest - len(r.prompt_ids):] = 1
        kwargs: dict[str, Any] = {"do_sample": s.temperature > 0, "max_new_tokens": s.max_new_tokens,
                                  "pad_token_id": pad}
        if s.temperature > 0:
            kwargs.update(temperature=s.temperature, top_p=s.top_p)
        if s.ignore_eos:
            kwargs["eos_token_id"] = None
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kwargs)
        touched: list[GenRequest] = []
        now = time.perf_counter()
        for req, row in zip(group, out[:, longest:].tolist()):
            req.t_first = now
            reason = "length"
            for tok in row:
                if tok in self.eos and not s.ignore_eos:
                    reason = "stop"
                    break
                req.tokens.append(tok)
                if s.stop and _hits_stop(self.tokenizer, req.tokens, s.stop):
                    reason = "stop"
                    break
            self.stats["tokens"] += len(req.tokens)
            self._finish(req, reason, touched)
        self.stats["steps"] += 1
        self._notify(touched)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _hits_stop(tokenizer, tokens: list[int], stop: Sequence[str]) -> bool:
    longest = max(len(s) for s in stop)
    tail = tokenizer.decode(tokens[-(longest + 4):], skip_special_tokens=True)
    return any(s in tail for s in stop)


# ---- text out of tokens ----------------------------------------------------------------------

def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def text_decoder(tokenizer):
    """`tokenizer.decode(ids, skip_special_tokens=True)` as a function of `ids`. For a fast
    tokenizer that does not clean up spaces it is the Rust tokenizer's own decode: the same
    text at a quarter of the cost (transformers' wrapper converts every id in Python first),
    and a stream decodes its text once per event."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is not None and hasattr(rust, "decode") and \
            not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: rust.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class TextStream:
    """The text of a request as it grows, in deltas: holds back an incomplete UTF-8 character
    (decoded as U+FFFD) and anything that may be the start of a stop string."""

    def __init__(self, tokenizer, req: GenRequest):
        self.tokenizer, self.req = tokenizer, req
        self._decode = text_decoder(tokenizer)
        self.sent = 0  # characters of the text already handed out
        self.finished = False  # the last delta() handed out the whole final text

    def text(self) -> str:
        full = self._decode(self.req.tokens)
        return cut_at_stop(full, self.req.sampling.stop) if self.req.sampling.stop else full

    def delta(self) -> str:
        # `done` is read before the tokens: the engine (another thread) appends a request's
        # last tokens, then marks it done, so a request seen done here has all its tokens in
        # the text decoded below. Read after, a request finishing during the decode looked done
        # with its last tokens missing from the text, and they were never sent.
        done = self.req.done
        full = self.text()
        end = len(full)
        if not done:
            if full.endswith("\ufffd"):
                end -= 1
            for s in self.req.sampling.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if full[:end].endswith(s[:k]):
                        end -= k
                        break
        end = max(end, self.sent)
        out, self.sent = full[self.sent:end], end
        self.finished = done
        return out


# ---- a generation bundle, ready to serve ---------------------------------------------------------

def is_generation_meta(meta: dict[str, Any]) -> bool:
    return (meta.get("task") or {}).get("type") == "generation"


def eos_ids(model, tokenizer) -> list[int]:
    """End-of-sequence token ids: the model's generation config's and the tokenizer's."""
    eos = set()
    for source in (getattr(model.generation_config, "eos_token_id", None),
                   tokenizer.eos_token_id):
        eos.update([source] if isinstance(source, int) else (source or []))
    return sorted(eos)


class Generator:
    """A loaded generation bundle (labelloop.generation.bundle), its prompt formatting
    (labelloop.generation.chat, as in training) and its `Engine`.

    With `engine_process` the model is not loaded here: this process keeps the tokenizer and
    the bundle's metadata (what requests need) and the engine runs in a spawned process of its
    own behind a proxy with the same interface (labelloop/engine_process.py)."""

    def __init__(self, bundle_dir: str | Path, device: str = "auto", version: str = "",
                 slots: Optional[int] = None, max_prompt_tokens: int = 512,
                 max_new_tokens: int = 512, max_waiting: int = 4096, prefill_tokens: int = 8192,
                 cuda_graphs: bool = True, stream_interval_s: float = 0.0,
                 switch_interval_s: Optional[float] = None, engine_process: bool = False,
                 admit_interval_s: float = 0.0, prefill_graphs: bool = True):
        from labelloop.generation.bundle import load_generation_bundle, load_generation_tokenizer
        from labelloop.modeling import pick_device

        model = None
        if engine_process:
            from transformers import AutoConfig

            self.tokenizer, self.meta = load_generation_tokenizer(bundle_dir)
            # torch.cuda.is_available() only: no CUDA context (GPU memory) in this process
            self.device = pick_device(device)
            config = AutoConfig.from_pretrained(str(bundle_dir))
        else:
            loaded = load_generation_bundle(bundle_dir, device=device)
            model, self.tokenizer, self.meta, self.device = (loaded.model, loaded.tokenizer,
                                                             loaded.meta, loaded.device)
            config = model.config
        self.bundle_dir, self.version = Path(bundle_dir), str(version)
        self.system_prompt = self.meta.get("system_prompt")
        # Prompt + new tokens must fit the model's positions: shrink both limits alike if not.
        limit = getattr(config, "max_position_embeddings", None) or 10**9
        total = int(max_prompt_tokens) + int(max_new_tokens)
        if total > limit:
            max_prompt_tokens = max(1, int(max_prompt_tokens) * limit // total)
            max_new_tokens = limit - max_prompt_tokens
        self.max_prompt_tokens, self.max_new_tokens = int(max_prompt_tokens), int(max_new_tokens)
        self.slots = int(slots or (256 if self.device.type == "cuda" else 16))
        engine_args = dict(slots=self.slots, max_seq=self.max_prompt_tokens + self.max_new_tokens,
                           max_waiting=max_waiting, prefill_tokens=prefill_tokens,
                           cuda_graphs=cuda_graphs, name=f"v{version}",
                           stream_interval_s=stream_interval_s,
                           switch_interval_s=switch_interval_s, admit_interval_s=admit_interval_s,
                           prefill_graphs=prefill_graphs)
        if engine_process:
            from labelloop.engine_process import EngineProcess

            self.engine: Any = EngineProcess(str(bundle_dir), str(self.device), engine_args,
                                             warm_up_ids=self.encode("warm-up"))
        else:
            self.engine = Engine(model, self.tokenizer, eos_ids(model, self.tokenizer),
                                 **engine_args)

    def encode(self, prompt: Optional[str] = None, messages: Optional[list[dict]] = None,
               raw: bool = False, max_tokens: Optional[int] = None) -> list[int]:
        """Token ids of a prompt: chat `messages`, or `prompt` as one user turn, through the
        chat template with the bundle's system prompt (exactly as in training), or `prompt`
        verbatim when `raw`. Never cut unless `max_tokens` is given (the caller checks the
        length); then fitted as training fits it (chat.fit_prompt)."""
        from labelloop.generation import chat

        if messages is None and raw:
            return self.tokenizer(prompt)["input_ids"]
        turns = chat.messages_for(messages if messages is not None else prompt,
                                  self.system_prompt)
        return chat.prompt_ids(self.tokenizer, turns, max_tokens or 10**9)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def info(self) -> dict[str, Any]:
        return {
            **self.engine.describe(),
            "slots": self.slots, "max_prompt_tokens": self.max_prompt_tokens,
            "max_new_tokens": self.max_new_tokens,
            "stream_interval_ms": round(self.engine.stream_interval_s * 1000, 3),
            "gil_switch_interval_ms": round(sys.getswitchinterval() * 1000, 3),
            # the engine's own process (serving.generation.engine_process), or None: a thread
            "engine_pid": getattr(self.engine, "pid", None),
        }
