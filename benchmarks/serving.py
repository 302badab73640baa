"""Serving benchmark: the labelloop BentoML service vs a naive FastAPI app vs the in-process ceiling.

  (a) service  - `bentoml serve` of services/service.py (adaptive batching), a real process
  (b) naive    - plain FastAPI + uvicorn, a transformers `pipeline("text-classification")` called
                 once per request, unbatched (what most teams write first); a real process
  (c) ceiling  - the same model's batched forward pass in this process, no HTTP

Single-text requests (tweets from the project's corpus) from an async httpx load generator with
C concurrent clients (closed loop), each level bounded by --duration seconds; --max-requests may
end a level earlier, but never before --min-level-s (default 10 s, at most --duration), so a
peak level is long enough to be stable.
Everything binds to 127.0.0.1. The model is the registry champion of --data-dir, or, by default,
a freshly registered untrained MiniLM in a temp registry (same architecture and cost as a trained one).

  python benchmarks/serving.py --quick                    # CPU, about 2 minutes
  python benchmarks/serving.py --device cuda --concurrency 1 8 32 128 512 --out results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import labelloop  # noqa: E402,F401  (telemetry off before anything else)


# ---- (b) the naive server ------------------------------------------------------------------

def run_naive_server(bundle: str, port: int, device: str) -> None:
    """What most teams write first: one pipeline call per request."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi import Body
    from transformers import pipeline

    dev = 0 if device.startswith("cuda") and torch.cuda.is_available() else -1
    clf = pipeline("text-classification", model=bundle, tokenizer=bundle, device=dev, top_k=None,
                   truncation=True, max_length=64)
    app = FastAPI()

    @app.post("/classify")
    def classify(payload: dict = Body(...)):
        scores = clf(payload["text"])
        scores = scores[0] if scores and isinstance(scores[0], list) else scores
        best = max(scores, key=lambda s: s["score"])
        return {"label": best["label"], "score": best["score"],
                "probabilities": {s["label"]: s["score"] for s in scores}}

    @app.get("/readyz")
    def ready():
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- helpers ---------------------------------------------------------------------------------

def materialize_skeleton(skeleton: Path, out: Path) -> Path:
    """Random weights for a bundle skeleton (what travels to a machine without the base model)."""
    import shutil

    from transformers import AutoConfig, AutoModelForSequenceClassification

    if (out / "labelloop.json").is_file() and any(out.glob("*.safetensors")):
        return out
    shutil.copytree(skeleton, out, dirs_exist_ok=True)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(out)))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def corpus_texts(settings, n: int = 5000) -> list[str]:
    import pandas as pd

    from labelloop.settings import resolve_path

    try:
        df = pd.read_csv(resolve_path(settings.dataset.path), encoding=settings.dataset.encoding)
        texts = [t for t in df[settings.dataset.text_column].astype(str).tolist() if t.strip()]
    except Exception:  # noqa: BLE001 - any text will do
        texts = [f"this is test sentence number {i}, it is neither good nor bad" for i in range(n)]
    return texts[:n]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def worker_requests(url: str, workers: int, timeout: float = 180) -> dict[int, int]:
    """Requests each service worker has batched so far, by pid: /metadata over a fresh connection
    per call until `workers` distinct workers answered. Also the readiness check: BentoML reports
    ready as soon as one worker is; the others may still be loading, and the connections a load
    level opens early would all stick to the first ones up."""
    import httpx

    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/metadata", timeout=5, headers={"Connection": "close"})
            if r.status_code == 200:
                meta = r.json()
                seen[meta["worker_pid"]] = meta["batch_stats"]["requests"]
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    if len(seen) < workers:
        print(f"  warning: only {len(seen)} of {workers} service workers answered", flush=True)
    return seen


def worker_balance(before: dict[int, int], after: dict[int, int]) -> dict:
    """How evenly a level's requests spread over the workers (1.0 = perfectly even)."""
    served = sorted((after[pid] - before.get(pid, 0) for pid in after), reverse=True)
    mean = sum(served) / len(served) if served else 0.0
    return {"requests_per_worker": served,
            "max_over_mean": round(served[0] / mean, 2) if mean else None}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * (len(values) - 1)))))
    return values[k]


class RawHTTP:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark.

    httpx costs about 1 ms of client CPU per request, which on the GPU box made the load
    generator, not the server, the limit near 2,000 requests/s. This costs a few tens of
    microseconds (like wrk or hey), so the numbers measure the server."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split()[1])
            length, chunked, close = 0, False, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            payload = b""
            if chunked:
                parts = []
                while True:
                    size = int((await self.reader.readline()).split(b";")[0], 16)
                    parts.append((await self.reader.readexactly(size + 2))[:size])
                    if size == 0:
                        break
                payload = b"".join(parts)
            elif length:
                payload = await self.reader.readexactly(length)
            if close:
                self.close()
            return status, payload
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            self.close()
            raise ConnectionError("request failed") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load_level(url: str, texts: list[str], concurrency: int, duration: float,
                     max_requests: int, warmup: int, rate: float | None = None,
                     min_seconds: float = 0.0) -> dict:
    """Closed loop (each connection sends its next request when the last one is answered), or,
    with `rate`, open loop: requests are due at a fixed total rate spread over the connections,
    and latency counts from when a request was due (so a server that falls behind is charged
    for the queueing it causes, not only for service time). The level ends after `duration`
    seconds, or once `max_requests` were sent but not before `min_seconds` have passed."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    conns = [RawHTTP(parts.hostname, parts.port) for _ in range(concurrency)]

    server_ms: list[float] = []  # the service's own `latency_ms` (handler to answer)
    send_lag: list[float] = []  # open loop: how late this generator sent a due request

    async def one(conn: RawHTTP, k: int) -> bool:
        try:
            status, payload = await conn.post(parts.path, bodies[k % len(bodies)])
        except ConnectionError:
            return False
        at = payload.rfind(b'"latency_ms":')
        if at >= 0:
            try:
                server_ms.append(float(payload[at + 13:].split(b",")[0].rstrip(b"}")))
            except ValueError:
                pass
        return status == 200

    # warm-up: open every connection, then more rounds up to `warmup` requests (batcher state)
    for _ in range(max(1, warmup // concurrency)):
        await asyncio.gather(*[one(conn, k) for k, conn in enumerate(conns)])
    server_ms.clear()
    latencies: list[float] = []
    errors = 0
    counter = 0
    start = time.perf_counter()  # the level's clock: its end and its minimum count from here
    t_end = start + duration
    t_min = start + min(min_seconds, duration)

    def going() -> bool:
        now = time.perf_counter()
        return now < t_end and (counter < max_requests or now < t_min)

    async def worker(k: int) -> None:
        nonlocal counter, errors
        conn = conns[k]
        interval = concurrency / rate if rate else 0.0
        due = time.perf_counter() + k * interval / concurrency
        while going():
            counter += 1
            if rate:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                send_lag.append(time.perf_counter() - due)
                t0, due = due, due + interval
            else:
                t0 = time.perf_counter()
            if await one(conn, counter * 7919 + k):
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    await asyncio.gather(*[worker(k) for k in range(concurrency)])
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return {"latencies": latencies, "server_ms": server_ms, "send_lag": send_lag,
            "errors": errors, "seconds": elapsed,
            "stopped_by": "max_requests" if counter >= max_requests and time.perf_counter() < t_end
            else "duration"}


def summarize(parts: list[dict], concurrency: int, rate: float | None) -> dict:
    """One level's figures from the raw samples of its load-generator processes. Beside the
    client's latency, where the time went: the service's own handler latency (tokenize, batch
    queue, forward; the rest is HTTP, event-loop queueing and the network) and, open loop, how
    late the generator itself sent requests (if large, the generator is the limit)."""
    lat = [x for p in parts for x in p["latencies"]]
    server = [x for p in parts for x in p["server_ms"]]
    lag = [x for p in parts for x in p["send_lag"]]
    res = {
        "concurrency": concurrency, "requests": len(lat),
        "errors": sum(p["errors"] for p in parts),
        "seconds": round(max(p["seconds"] for p in parts), 3), "offered_rate": rate,
        "stopped_by": sorted({p.get("stopped_by", "duration") for p in parts}),
        "throughput": round(sum(len(p["latencies"]) / p["seconds"] for p in parts), 1),
        "p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
    }
    if server:
        res["server_p50_ms"] = round(pct(server, 50), 2)
        res["server_p99_ms"] = round(pct(server, 99), 2)
    if lag:
        res["send_lag_p99_ms"] = round(pct(lag, 99) * 1000, 2)
    return res


def _run_async(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _client_proc(job: tuple) -> dict:
    url, texts, c, duration, max_requests, warmup, rate, min_seconds = job
    return _run_async(load_level(url, texts, c, duration, max_requests, warmup, rate,
                                 min_seconds))


def measure(url: str, texts, c: int, duration: float, max_requests: int, clients: int,
            rate: float | None = None, min_seconds: float = 0.0) -> dict:
    """One level; with clients > 1 the load comes from that many processes (one async loop each
    tops out around 1-2k requests/s)."""
    clients = max(1, min(clients, c))
    warmup = min(2 * c, 256)
    if clients == 1:
        parts = [_run_async(load_level(url, texts, c, duration, max_requests, warmup, rate,
                                       min_seconds))]
    else:
        import multiprocessing as mp

        jobs = [(url, texts, c // clients + (1 if k < c % clients else 0), duration,
                 max_requests // clients, warmup // clients, rate / clients if rate else None,
                 min_seconds)
                for k in range(clients)]
        with mp.get_context("spawn").Pool(clients) as pool:
            parts = pool.map(_client_proc, jobs)
    res = summarize(parts, c, rate)
    res["clients"] = clients
    return res


def run_levels(name: str, url: str, texts, levels, duration, max_requests,
               clients: int = 1, workers: int = 1, rate: float | None = None,
               min_seconds: float = 0.0) -> list[dict]:
    """One measurement per level; with several service workers, also how evenly the level's
    requests spread over them (an overloaded worker is where the latency tail comes from)."""
    out = []
    base = url.rsplit("/", 1)[0]
    for c in levels:
        load_before = os.getloadavg()[0]
        before = worker_requests(base, workers) if workers > 1 else None
        res = measure(url, texts, c, duration, max_requests, clients, rate=rate,
                      min_seconds=min_seconds)
        res["loadavg_1m_before"] = round(load_before, 2)
        res["system"] = name
        line = ""
        if before is not None:
            res["worker_balance"] = worker_balance(before, worker_requests(base, workers))
            line = f"  busiest worker {res['worker_balance']['max_over_mean']}x the mean"
        kind = f"open loop at {rate:.0f} req/s" if rate else f"c={c:<4d}"
        if "server_p99_ms" in res:
            line += f"  (in the handler: p50 {res['server_p50_ms']} p99 {res['server_p99_ms']} ms)"
        if "send_lag_p99_ms" in res:
            line += f"  generator lag p99 {res['send_lag_p99_ms']} ms"
        print(f"  {name:8s} {kind} {res['throughput']:9.1f} req/s  p50 {res['p50_ms']:8.1f} ms"
              f"  p99 {res['p99_ms']:8.1f} ms  errors {res['errors']}{line}", flush=True)
        out.append(res)
    return out


def ceiling(bundle: str, texts: list[str], settings, batch_size: int, seconds: float) -> list[dict]:
    """The batched model with no HTTP, loaded by the service's own loader (so CUDA graphs, int8
    and warm-up are as `settings.serving` has them): texts/s with tokenization, and from token
    ids (forward pass only)."""
    from services.runtime import load_bundle

    clf = load_bundle(settings, bundle, "ceiling").classifier
    chunks = [texts[i:i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
    chunks = chunks or [texts[:batch_size]]
    encoded = [clf.encode(c) for c in chunks]
    out = []
    for what, fn, items in (("texts", clf.logits, chunks), ("token ids", clf.logits_from_ids, encoded)):
        fn(items[0], batch_size)  # warm-up
        n, k, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n == 0:
            fn(items[k % len(items)], batch_size)
            n += len(items[k % len(items)])
            k += 1
        elapsed = time.perf_counter() - t0
        out.append({"system": "ceiling", "input": what, "batch_size": batch_size, "texts": n,
                    "cuda_graphs": clf.graphs is not None, "throughput": round(n / elapsed, 1)})
    return out


def machine() -> dict:
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in
                           open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--config", default=None,
                   help="a labelloop config (e.g. configs/serving-gpu.yaml) for the service and "
                        "the ceiling; the options below override its serving settings")
    p.add_argument("--concurrency", type=int, nargs="+", default=None,
                   help="concurrency levels (default 1 8 32 128)")
    p.add_argument("--duration", type=float, default=None, help="seconds per level (default 15)")
    p.add_argument("--max-requests", type=int, default=100_000,
                   help="cap per level; it ends a level only after --min-level-s")
    p.add_argument("--min-level-s", type=float, default=10.0,
                   help="a level runs at least this long whatever --max-requests says "
                        "(default 10; at most --duration)")
    p.add_argument("--quick", action="store_true", help="short levels (1 8 32, 6 s each)")
    p.add_argument("--data-dir", default=None,
                   help="serve this data dir's champion (default: a temp registry with an "
                        "untrained MiniLM)")
    p.add_argument("--max-batch-size", type=int, default=None, help="serving.max_batch_size")
    p.add_argument("--max-latency-ms", type=int, default=10_000,
                   help="serving.max_latency_ms (default 10000: a closed-loop load generator "
                        "measures capacity, not load shedding)")
    p.add_argument("--workers", type=int, default=None, help="serving.workers")
    p.add_argument("--batcher", choices=["bentoml", "inprocess"], default=None,
                   help="serving.batcher (default: the service's setting, bentoml)")
    p.add_argument("--cpu-int8", action="store_true",
                   help="serving.cpu_int8: int8 dynamic quantization in the service (CPU)")
    p.add_argument("--half-peak", action="store_true",
                   help="then load the service open-loop at half its peak throughput (p99 target)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="serve (and measure the ceiling) with eager forward passes on a GPU")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds per level, median reported (default 3; --quick 1)")
    p.add_argument("--clients", type=int, default=1,
                   help="load-generator processes (use several for more than ~1k requests/s)")
    p.add_argument("--bundle", default=None,
                   help="serve this model bundle directly (serving.bundle_dir; no registry)")
    p.add_argument("--bundle-skeleton", default=None,
                   help="a bundle without weights (config, tokenizer, labelloop.json): random "
                        "weights are created from its config (same cost as a trained model)")
    p.add_argument("--texts", default=None, help="file with one text per line (default: corpus)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other serving settings for the service, e.g. max_connection_age_s=0.5")
    p.add_argument("--no-metrics", action="store_true",
                   help="serving.metrics: false (no Prometheus metrics middleware in the service)")
    p.add_argument("--skip", nargs="*", default=[], choices=["service", "naive", "ceiling"])
    p.add_argument("--out", default=None, help="write JSON results here")
    # internal: run the naive server
    p.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--naive-bundle", dest="naive_bundle", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    extra_settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            p.error(f"--set expects KEY=VALUE (a serving setting), got {item!r}")
        extra_settings[key.strip()] = value
    if args.config:
        args.config = str(Path(args.config).resolve())
    if extra_settings or args.config:  # fail here, not later in a server's worker
        from labelloop.settings import load_settings as _load

        try:
            _load(args.config, environ={f"LABELLOOP__SERVING__{k.upper()}": v
                                       for k, v in extra_settings.items()})
        except Exception as exc:  # noqa: BLE001
            p.error(f"invalid settings: {exc}")

    if args.naive_server:
        run_naive_server(args.naive_bundle, args.port, args.device)
        return 0

    # a `timeout` around the benchmark must still stop the servers (finally blocks below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = args.concurrency or ([1, 8, 32] if args.quick else [1, 8, 32, 128])
    duration = args.duration or (6.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 3)

    from labelloop.settings import load_settings
    from tests.helpers import free_port, register_untrained_version, stop_process_group

    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="labelloop-bench-"))
    settings = load_settings(args.config, overrides={"data_dir": str(data_dir)})
    fixed_bundle = None
    if args.bundle_skeleton:
        fixed_bundle = str(materialize_skeleton(Path(args.bundle_skeleton), data_dir / "bundle"))
    elif args.bundle:
        fixed_bundle = str(Path(args.bundle).resolve())
    if fixed_bundle:
        bundle, version = fixed_bundle, "bundle"
    else:
        from labelloop import registry

        champion = registry.get_champion(settings)
        if champion is None:
            if args.data_dir:
                print(f"no champion in {data_dir}; run `labelloop train`", file=sys.stderr)
                return 2
            print("registering an untrained MiniLM as champion in", data_dir, flush=True)
            register_untrained_version(settings, seed=0, champion=True)
            champion = registry.get_champion(settings)
        bundle, version = str(registry.fetch_bundle(settings, champion.version)), str(champion.version)
    if args.texts:
        texts = [t for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
    else:
        texts = corpus_texts(settings)
    info = machine()
    print(json.dumps(info), flush=True)
    results: dict = {"machine": info, "levels": levels, "duration_s": duration,
                     "min_level_s": min(args.min_level_s, duration),
                     "max_requests": args.max_requests,
                     "model_version": version, "runs": []}

    if "ceiling" not in args.skip:
        ceiling_settings = load_settings(args.config, overrides={"data_dir": str(data_dir), "serving": {
            "device": args.device, "cuda_graphs": not args.no_cuda_graphs,
            "cpu_int8": args.cpu_int8}})
        for bs in (1, 32, 256):
            for res in ceiling(bundle, texts, ceiling_settings, bs, seconds=min(duration, 5)):
                print(f"  ceiling  batch={bs:<4d} from {res['input']:9s} "
                      f"{res['throughput']:9.1f} texts/s  (CUDA graphs: {res['cuda_graphs']})",
                      flush=True)
                results["runs"].append(res)

    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"LABELLOOP__DATA_DIR": str(data_dir), "LABELLOOP__SERVING__DEVICE": args.device,
                "LABELLOOP__SERVING__POLL_INTERVAL_S": "0", "PYTHONUNBUFFERED": "1"})
    if args.config:
        env["LABELLOOP_CONFIG"] = args.config
    if fixed_bundle:
        env["LABELLOOP__SERVING__BUNDLE_DIR"] = fixed_bundle
    if args.cpu_int8:
        env["LABELLOOP__SERVING__CPU_INT8"] = "true"
    if args.no_cuda_graphs:
        env["LABELLOOP__SERVING__CUDA_GRAPHS"] = "false"
    if args.batcher:
        env["LABELLOOP__SERVING__BATCHER"] = args.batcher
    if args.no_metrics:
        env["LABELLOOP__SERVING__METRICS"] = "false"
    for key, value in extra_settings.items():
        env[f"LABELLOOP__SERVING__{key.upper()}"] = value
    for key, val in (("MAX_BATCH_SIZE", args.max_batch_size),
                     ("MAX_LATENCY_MS", args.max_latency_ms), ("WORKERS", args.workers)):
        if val is not None:
            env[f"LABELLOOP__SERVING__{key}"] = str(val)
    results["service_env"] = {k: v for k, v in env.items()
                              if k.startswith("LABELLOOP__SERVING") or k == "LABELLOOP_CONFIG"}
    workers = load_settings(environ=env).serving.workers
    log_dir = data_dir / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    # Both servers run side by side (an idle one costs next to nothing) and the levels alternate
    # naive/service for --rounds rounds; the median round counts. On a shared machine this keeps
    # both systems under the same background load.
    procs, urls = {}, {}
    try:
        if "naive" not in args.skip:
            port = free_port()
            procs["naive"] = subprocess.Popen(
                [sys.executable, __file__, "--naive-server", "--naive-bundle", bundle, "--port",
                 str(port), "--device", args.device],
                cwd=str(REPO_ROOT), env=env, start_new_session=True,
                stdout=open(log_dir / "naive.log", "wb"), stderr=subprocess.STDOUT)
            urls["naive"] = f"http://127.0.0.1:{port}"
        if "service" not in args.skip:
            port = free_port()
            procs["service"] = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port",
                 str(port)],
                cwd=str(REPO_ROOT), env=env, start_new_session=True,
                stdout=open(log_dir / "service.log", "wb"), stderr=subprocess.STDOUT)
            urls["service"] = f"http://127.0.0.1:{port}"
        for name, proc in procs.items():
            wait_ready(proc, urls[name])
        if "service" in urls:
            n = len(worker_requests(urls["service"], workers))
            print(f"  service: {n} worker(s) ready", flush=True)
        for c in levels:
            rounds: dict[str, list[dict]] = {name: [] for name in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    rounds[name] += run_levels(name, f"{url}/classify", texts, [c], duration,
                                               args.max_requests, args.clients,
                                               workers if name == "service" else 1,
                                               min_seconds=args.min_level_s)
            for name, runs in rounds.items():
                runs.sort(key=lambda r: r["throughput"])
                best = dict(runs[len(runs) // 2])
                best["rounds"] = [r["throughput"] for r in runs]
                best["errors"] = sum(r["errors"] for r in runs)
                results["runs"].append(best)
        if args.half_peak and "service" in urls:
            # The latency target's load: open loop at half the best closed-loop throughput.
            peak = max(r["throughput"] for r in results["runs"] if r["system"] == "service")
            print(f"  service  open loop at half of peak {peak:.0f} req/s:", flush=True)
            res = run_levels("service", f"{urls['service']}/classify", texts, [max(levels)],
                             duration, args.max_requests, args.clients, workers,
                             rate=peak / 2, min_seconds=args.min_level_s)[0]
            res.update(open_loop=True, peak_throughput=peak)
            results["half_peak"] = res
        if "service" in urls:
            import httpx

            results["service_metadata"] = httpx.get(f"{urls['service']}/metadata").json()
    finally:
        for proc in procs.values():
            stop_process_group(proc)

    # ---- table and ratios ----
    by = {(r["system"], r.get("concurrency")): r for r in results["runs"]}
    ceil_best = max((r["throughput"] for r in results["runs"]
                     if r["system"] == "ceiling" and r.get("input") == "texts"), default=None)
    print("\n| concurrency | naive req/s | naive p50/p99 ms | service req/s | service p50/p99 ms "
          "| service/naive | service/ceiling |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ratios = {}
    for c in levels:
        n, s = by.get(("naive", c)), by.get(("service", c))
        ratio = (s["throughput"] / n["throughput"]) if n and s and n["throughput"] else None
        ratios[c] = ratio
        fmt = lambda r: f"{r['throughput']:.0f}" if r else "-"  # noqa: E731
        lat = lambda r: f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" if r else "-"  # noqa: E731
        ratio_txt = f"{ratio:.1f}x" if ratio else "-"
        ceil_txt = f"{s['throughput'] / ceil_best:.0%}" if s and ceil_best else "-"
        print(f"| {c} | {fmt(n)} | {lat(n)} | {fmt(s)} | {lat(s)} | {ratio_txt} | {ceil_txt} |")
    if ceil_best:
        print(f"\nin-process ceiling (batched, tokenization included, no HTTP): {ceil_best:.0f} texts/s")
    results["ratios_service_over_naive"] = ratios
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
