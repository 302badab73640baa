"""The slot decoder's prefill as CUDA graphs and its joined layers, against the decoder before
them: the same logits, cache and tokens, and the cost per prefill and per decoding step.

In an open loop requests reach the generation engine one or two at a time, so nearly every
engine iteration runs a prefill of a few prompts. Eagerly that is ~600 kernel launches from
Python (SmolLM2-135M, 30 layers); labelloop/slot_decoder.py pads small prefills to a (rows,
length) bucket and replays each bucket as a CUDA graph, and runs each layer with fewer kernels
(joined projections, one rms_norm call). Three decoders over one random SmolLM2-135M in bf16:
`before` (eager prefill, the model's own layer modules: the baseline), `graphs` (prefill graphs,
layer modules) and `now` (prefill graphs, joined layers: the default). This checks that each
writes the same cache and gives the same logits and greedy tokens as `before`, then times a
prefill of 1, 2, 4, 8 and 16 prompts and a decoding step of 1, 64 and 256 rows: wall time
(synchronised) and the CPU time of the calling thread, which is what the engine thread pays.

  python benchmarks/prefill_graphs.py --device cuda --out prefill_graphs.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
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
    p.add_argument("--device", default="cuda")
    p.add_argument("--slots", type=int, default=256)
    p.add_argument("--max-seq", type=int, default=1024, help="the service's default: 512 + 512")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--tiny", action="store_true", help="a tiny Llama (the test suite's smoke run)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rng = random.Random(0)
    model = random_llama(args.device, smollm2=not args.tiny, tiny_layers=2)
    vocab = model.config.vocab_size
    eager = SlotDecoder(model, args.slots, args.max_seq, cuda_graphs=True, fuse=False)
    eager.pad_prefill = False  # the baseline: decode graphs, prefill eager, the model's modules
    graphs = SlotDecoder(model, args.slots, args.max_seq, cuda_graphs=True, fuse=False)
    graphed = SlotDecoder(model, args.slots, args.max_seq, cuda_graphs=True)  # the default
    decoders = {"before": eager, "graphs": graphs, "now": graphed}
    print(f"device {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}; "
          f"prefill graphs {'on' if graphed.pad_prefill else 'OFF'}", flush=True)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(n)]

    # ---- the same cache, logits and greedy tokens -----------------------------------------
    checks, worst = [], 0.0
    cases = [(1, [7]), (1, [40]), (2, [12, 33]), (3, [5, 64, 20]), (5, [100, 9, 31, 70, 2]),
             (16, [rng.randrange(1, 200) for _ in range(16)]), (1, [700]), (20, [30] * 20)]
    for b, lens in cases:
        prompts = [prompt(n) for n in lens]
        slots = rng.sample(range(args.slots), b)
        le = eager.prefill(slots, prompts)
        for name in ("graphs", "now"):
            other = decoders[name]
            lg = other.prefill(slots, prompts)
            rel = float((le - lg).abs().max() / le.abs().max())
            same_first = bool(torch.equal(le.argmax(-1), lg.argmax(-1)))
            cache = max(float((eager.k[:, s, :, :n] - other.k[:, s, :, :n]).abs().max())
                        for s, n in zip(slots, lens))
            # four greedy steps on both: do the tokens agree?
            toks_e, toks_g = le.argmax(-1).tolist(), lg.argmax(-1).tolist()
            n_rows = max(slots) + 1
            agree = True
            for step in range(4):
                ids_e, ids_g, pos = [0] * n_rows, [0] * n_rows, [0] * n_rows
                for r, (s, n) in enumerate(zip(slots, lens)):
                    ids_e[s], ids_g[s], pos[s] = toks_e[r], toks_g[r], n + step
                ne = eager.decode_greedy(n_rows, ids_e, pos)
                ng = other.decode_greedy(n_rows, ids_g, pos)
                toks_e, toks_g = [ne[s] for s in slots], [ng[s] for s in slots]
                agree = agree and toks_e == toks_g
            worst = max(worst, rel)
            checks.append({"decoder": name, "prompts": b, "lengths": lens,
                           "bucket": other._prefill_bucket(b, max(lens)),
                           "logits_rel_diff": rel, "same_first_tokens": same_first,
                           "cache_max_abs_diff": cache, "same_next_4_tokens": agree})
            print(f"  check {name:6s} {b:>2} prompts, longest {max(lens):>3}: bucket "
                  f"{checks[-1]['bucket']}, logits rel diff {rel:.4f}, cache diff {cache:.4f}, "
                  f"tokens {'same' if same_first and agree else 'DIFFER'}", flush=True)
    # bf16 rounding differs with the padded shapes: a few percent of the largest logit, as
    # the engine's own parity check allows (0.1); tokens may still flip on near-ties
    ok = worst < 0.1

    # ---- cost per prefill --------------------------------------------------------------
    timings = []
    for b in (1, 2, 4, 8, 16):
        row = {"prompts": b}
        batches = [[prompt(rng.randrange(20, 60)) for _ in range(b)] for _ in range(args.reps)]
        for name, dec in decoders.items():
            dec.prefill(list(range(b)), batches[0])  # capture / warm
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            for batch in batches:
                dec.prefill(list(range(b)), batch).argmax(-1).tolist()  # what the engine reads
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            row[name] = {"wall_ms": 1000 * wall / args.reps, "cpu_ms": 1000 * cpu / args.reps}
        row["wall_ratio"] = row["before"]["wall_ms"] / row["now"]["wall_ms"]
        timings.append(row)
        print(f"  prefill of {b:>2} prompts of 20-60 tokens: " + ", ".join(
            f"{n} {row[n]['wall_ms']:.2f} ms (CPU {row[n]['cpu_ms']:.2f})" for n in decoders)
            + f": {row['wall_ratio']:.1f}x", flush=True)

    # ---- a decoding step: what one engine iteration costs beside its prefill ----------------
    steps = []
    for rows in (1, 64, 256):
        if rows > args.slots:
            continue
        ids, pos = [5] * rows, [rng.randrange(20, 120) for _ in range(rows)]
        row = {"rows": rows}
        for name in ("graphs", "now"):  # `before` decodes exactly as `graphs`
            dec = decoders[name]
            dec.decode_greedy(rows, ids, pos)  # capture / warm
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            for _ in range(args.reps):
                dec.decode_greedy(rows, ids, pos)
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            row[name] = {"wall_ms": 1000 * wall / args.reps, "cpu_ms": 1000 * cpu / args.reps}
        row["wall_ratio"] = row["graphs"]["wall_ms"] / row["now"]["wall_ms"]
        steps.append(row)
        print(f"  decoding step of {rows:>3} rows (graph, greedy): layer modules "
              f"{row['graphs']['wall_ms']:.2f} ms, joined {row['now']['wall_ms']:.2f} ms: "
              f"{row['wall_ratio']:.2f}x", flush=True)
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "slots": args.slots, "max_seq": args.max_seq,
              "checks": checks, "parity_ok": ok, "timings": timings, "decode_steps": steps,
              "graphs": len(graphed._graphs), "capture_s": graphed.capture_seconds}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"parity {'OK' if ok else 'FAILED'} (largest logits difference {worst:.4f}); "
          f"{len(graphed._graphs)} graphs captured in {graphed.capture_seconds:.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
