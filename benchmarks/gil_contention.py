"""How a busy event-loop thread slows the generation engine's steps through the GIL.

The engine (labelloop/generation_engine.py) is a thread of the API worker. Every torch call
drops the GIL and must win it back; while another thread runs Python, CPython makes it wait up
to the switch interval (5 ms by default). This runs the slot decoder's prefill and decode steps
(the engine's work) alone, then beside a thread doing pure-Python JSON work (what the event loop
does per server-sent event), at several switch intervals, and prints the step times and how
much work the busy thread got done.

  python benchmarks/gil_contention.py --device cpu            # a tiny model (2 cores: noisy)
  python benchmarks/gil_contention.py --device cuda --smollm2 # SmolLM2-135M shape, CUDA graphs
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    import torch
    from benchmarks.generation_serving import random_llama
    from labelloop.slot_decoder import SlotDecoder

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smollm2", action="store_true", help="SmolLM2-135M's shape (else tiny)")
    p.add_argument("--rows", type=int, default=64, help="sequences per decode step")
    p.add_argument("--intervals-ms", type=float, nargs="+", default=[5, 1, 0.5, 0.25, 0.1])
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    model = random_llama(args.device, args.smollm2)
    dec = SlotDecoder(model, args.rows, 256, cuda_graphs=True)
    n = args.rows
    prompt = list(range(1, 36))

    def steps(k: int = 20) -> tuple[float, float]:
        t = time.perf_counter()
        dec.prefill([0], [prompt])[0, 0].item()
        pre = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(k):
            dec.decode_greedy(n, [1] * n, [40] * n)
        return pre, (time.perf_counter() - t) / k

    def busy(stop: threading.Event, done: list) -> None:
        event = {"id": "chatcmpl-" + "x" * 24, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
        while not stop.is_set():
            for _ in range(50):
                json.dumps(event)
            done[0] += 50

    stream = dec.stream if dec.stream is not None else None
    ctx = torch.cuda.stream(stream) if stream is not None else None
    if ctx:
        ctx.__enter__()
    for _ in range(3):
        steps(5)  # warm-up (graph capture)
    default = sys.getswitchinterval()
    rows = []
    for interval in [None] + args.intervals_ms:
        sys.setswitchinterval(interval / 1000 if interval else default)
        stop, done = threading.Event(), [0]
        th = threading.Thread(target=busy, args=(stop, done)) if interval else None
        if th:
            th.start()
        t0 = time.perf_counter()
        got = [steps() for _ in range(5)]
        wall = time.perf_counter() - t0
        stop.set()
        if th:
            th.join()
        pre = sorted(g[0] for g in got)[2]
        dec_s = sorted(g[1] for g in got)[2]
        row = {"switch_interval_ms": interval, "busy_thread": bool(th),
               "prefill_ms": round(pre * 1000, 2), "decode_step_ms": round(dec_s * 1000, 3),
               "busy_thread_json_per_s": round(done[0] / wall)}
        rows.append(row)
        print(f"  {'alone' if not th else f'busy thread, interval {interval:g} ms':32s} prefill "
              f"{row['prefill_ms']:7.2f} ms  decode step ({n} rows) {row['decode_step_ms']:7.3f} ms"
              f"  busy thread {row['busy_thread_json_per_s']:>9,} json/s", flush=True)
    sys.setswitchinterval(default)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": args.device, "smollm2": args.smollm2,
                                              "rows": n, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
