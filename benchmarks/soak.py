"""Soak test: N clients for M minutes against a real service, with a hot reload in the middle.

    python benchmarks/soak.py                         # 256 clients, 10 minutes, own service
    python benchmarks/soak.py --clients 32 --minutes 1 --out soak.json
    python benchmarks/soak.py --url http://127.0.0.1:3000 --admin-token T   # a running service

Without --url it starts `bentoml serve` (defaults; a temp data dir with two untrained
registered versions) and stops it at the end. The load comes from this process (closed loop:
each client sends its next single-text /classify when the last one is answered, over a
keep-alive connection). Halfway through, the champion alias moves to the other version and
`POST /admin/reload` swaps it in while the load goes on (with --url the registry is the one
the settings name: LABELLOOP__DATA_DIR or LABELLOOP__REGISTRY__TRACKING_URI).

A request the service sheds under overload (503, `Retry-After: 1`) is counted as shed, not as
an error, and its client waits as that header says before sending again (as a well-behaved
client does; retrying at once only keeps the worker busy refusing).

Reported: errors by kind (any other status, or a connection failure), requests shed, per minute
the answers, p50 / p90 / p99 / max latency of the served ones and the model versions served,
and every service process's memory (RSS of the `bentoml serve` parent and each worker) sampled
every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import labelloop  # noqa: E402,F401  (telemetry off before anything else)
from benchmarks.serving import RawHTTP, corpus_texts, pct, wait_ready  # noqa: E402

MEMORY_EVERY_S = 5.0


def service_processes(url: str) -> list:
    """The serving parent and its workers (psutil processes), found from /metadata's worker pid."""
    import httpx
    import psutil

    worker = psutil.Process(httpx.get(url + "/metadata", timeout=10).json()["worker_pid"])
    parent = worker.parent()
    return [parent, *parent.children()] if parent is not None else [worker]


def sample_memory(url: str, t: float) -> dict:
    import psutil

    out = {"t_s": round(t, 1)}
    try:
        procs = service_processes(url)
    except Exception as exc:  # noqa: BLE001 - a sample missed is reported, not fatal
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    for i, proc in enumerate(procs):
        try:
            role = "parent" if i == 0 and len(procs) > 1 else f"worker {proc.pid}"
            out[role] = round(proc.memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
    return out


def move_champion_and_reload(url: str, token: str) -> dict:
    """Point the champion alias at another ready version and ask the service to reload."""
    import httpx

    from labelloop import registry
    from labelloop.settings import load_settings

    settings = load_settings()
    current = str(registry.get_champion(settings).version)
    others = [str(mv.version) for mv in registry.list_versions(settings)
              if str(mv.version) != current and mv.tags.get(registry.STATUS_TAG) == "ready"]
    if not others:
        return {"error": "no other ready version to reload to"}
    registry.set_champion(settings, others[0])
    t0 = time.perf_counter()
    r = httpx.post(url + "/admin/reload", headers={"Authorization": f"Bearer {token}"},
                   timeout=300)
    return {"status": r.status_code, "answer": r.json(), "from": current, "to": others[0],
            "seconds": round(time.perf_counter() - t0, 2)}


async def soak(url: str, texts: list[str], clients: int, seconds: float, reload_at: float,
               token: str | None) -> dict:
    parts = urlsplit(url)
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    samples: list[tuple[float, float, int, str]] = []  # (t, latency s, status, version)
    errors: Counter = Counter()
    shed = [0]
    memory: list[dict] = []
    reload: dict = {}
    start = time.perf_counter()
    end = start + seconds

    async def client(k: int) -> None:
        conn = RawHTTP(parts.hostname, parts.port)
        n = k
        while time.perf_counter() < end:
            n += clients
            t0 = time.perf_counter()
            try:
                status, payload = await conn.post("/classify", bodies[n % len(bodies)])
            except ConnectionError:
                errors["connection"] += 1
                await asyncio.sleep(0.05)
                continue
            at = payload.find(b'"model_version":')
            version = payload[at + 16:at + 40].split(b'"')[1].decode() if at >= 0 else "?"
            samples.append((t0 - start, time.perf_counter() - t0, status, version))
            if status == 503:
                shed[0] += 1
                await asyncio.sleep(1.0)  # Retry-After
            elif status != 200:
                errors[str(status)] += 1
        conn.close()

    async def monitor() -> None:
        next_reload = start + reload_at * seconds if token and reload_at > 0 else None
        while time.perf_counter() < end:
            memory.append(await asyncio.to_thread(sample_memory, url,
                                                  time.perf_counter() - start))
            if next_reload is not None and time.perf_counter() >= next_reload:
                next_reload = None
                t = time.perf_counter() - start
                reload.update(await asyncio.to_thread(move_champion_and_reload, url, token))
                reload["at_s"] = round(t, 1)
                print(f"  reload at {t:.0f} s: {reload}", flush=True)
            await asyncio.sleep(min(MEMORY_EVERY_S, max(0.0, end - time.perf_counter())))
        memory.append(await asyncio.to_thread(sample_memory, url, time.perf_counter() - start))

    await asyncio.gather(monitor(), *[client(k) for k in range(clients)])
    return {"samples": samples, "errors": dict(errors), "shed": shed[0], "memory": memory,
            "reload": reload, "seconds": time.perf_counter() - start}


def per_minute(samples: list[tuple[float, float, int, str]]) -> list[dict]:
    buckets: dict[int, list] = {}
    for s in samples:
        buckets.setdefault(int(s[0] // 60), []).append(s)
    out = []
    for minute in sorted(buckets):
        rows = buckets[minute]
        ok = [lat * 1000 for _, lat, status, _ in rows if status == 200]
        out.append({"minute": minute + 1, "answers": len(rows), "served": len(ok),
                    "shed": sum(1 for r in rows if r[2] == 503),
                    "errors": sum(1 for r in rows if r[2] not in (200, 503)),
                    "p50_ms": round(pct(ok, 50), 1), "p90_ms": round(pct(ok, 90), 1),
                    "p99_ms": round(pct(ok, 99), 1), "max_ms": round(max(ok, default=0), 1),
                    "versions": dict(Counter(r[3] for r in rows if r[2] == 200))})
    return out


def report(result: dict, clients: int) -> dict:
    minutes = per_minute(result.pop("samples"))
    summary = {"clients": clients, "seconds": round(result["seconds"], 1),
               "answers": sum(m["answers"] for m in minutes),
               "served": sum(m["served"] for m in minutes), "shed": result["shed"],
               "errors": result["errors"], "per_minute": minutes, "reload": result["reload"],
               "memory_mb": result["memory"]}
    print(f"soak: {clients} clients, {summary['seconds']:.0f} s, {summary['answers']} answers "
          f"({summary['served']} served, {summary['shed']} shed with 503), errors "
          f"{summary['errors'] or 0}")
    print("  minute   served    shed  errors   p50 ms   p90 ms   p99 ms   max ms  versions")
    for m in minutes:
        print(f"  {m['minute']:>6}  {m['served']:>7}  {m['shed']:>6}  {m['errors']:>6}  "
              f"{m['p50_ms']:>7}  "
              f"{m['p90_ms']:>7}  {m['p99_ms']:>7}  {m['max_ms']:>7}  {m['versions']}")
    mem = [m for m in result["memory"] if "error" not in m]
    if mem:
        roles = sorted({k for m in mem for k in m if k != "t_s"})
        for role in roles:
            series = [m[role] for m in mem if role in m]
            print(f"  memory {role}: first {series[0]} MB, peak {max(series)} MB, "
                  f"last {series[-1]} MB ({len(series)} samples)")
    return summary


def start_own_service(data_dir: Path, token: str):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet set-up
    import transformers

    transformers.logging.set_verbosity_error()
    from labelloop.settings import load_settings
    from tests.helpers import free_port, register_untrained_version

    settings = load_settings(overrides={"data_dir": str(data_dir)}, environ={})
    print("registering two untrained versions in", data_dir, flush=True)
    register_untrained_version(settings, seed=0, champion=True)
    register_untrained_version(settings, seed=1, champion=False)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"LABELLOOP__DATA_DIR": str(data_dir), "LABELLOOP__SERVING__ADMIN_TOKEN": token,
                "LABELLOOP__SERVING__POLL_INTERVAL_S": "0", "PYTHONUNBUFFERED": "1"})
    log = open(data_dir / "soak-server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=str(REPO_ROOT), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url)
    os.environ["LABELLOOP__DATA_DIR"] = str(data_dir)  # the registry the reload moves
    return proc, url, settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--url", help="soak a running service instead of starting one")
    ap.add_argument("--admin-token", help="with --url: the service's serving.admin_token "
                                          "(no reload without it)")
    ap.add_argument("--reload-at", type=float, default=0.5,
                    help="when to move the champion and reload, as a fraction of the run "
                         "(0 = never)")
    ap.add_argument("--out", help="write the report as JSON here")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.minutes <= 0:
        ap.error("--clients and --minutes must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    proc = None
    if args.url:
        url, token = args.url.rstrip("/"), args.admin_token
        from labelloop.settings import load_settings

        settings = load_settings()
    else:
        token = os.urandom(16).hex()
        proc, url, settings = start_own_service(Path(tempfile.mkdtemp(prefix="labelloop-soak-")),
                                                token)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        texts = corpus_texts(settings)
        print(f"soaking {url}: {args.clients} clients for {args.minutes:g} min", flush=True)
        result = asyncio.run(soak(url, texts, args.clients, args.minutes * 60, args.reload_at,
                                  token))
        summary = report(result, args.clients)
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1))
    finally:
        if proc is not None:
            from tests.helpers import stop_process_group

            stop_process_group(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
