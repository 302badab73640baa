"""The service serving a generation champion: a real `bentoml serve`, called over HTTP and with
the `openai` client.

One server for the module: a temp data dir with a real MLflow registry holding two tiny random
Llama generation bundles (v1 champion; v2 the one hot reload switches to). Their weights are
drawn wide so that greedy outputs are varied text and differ between the versions: that is what
lets the hot-reload test check that no response mixes versions.

The engine runs in a process of its own (`serving.generation.engine_process: true`,
labelloop/engine_process.py), so every test here goes through the pipe to it; the in-thread
engine (the CPU default) is served by tests/integration/test_ls_generation_loop.py and the unit
tests. The module ends by killing the engine process (503s, a new process) and checks that no
engine process outlives the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import labelloop  # noqa: F401
from labelloop import registry
from labelloop.prediction_log import read_predictions
from labelloop.settings import load_settings
from tests.helpers import free_port, stop_process_group, tiny_generation_bundle
from tests.integration.test_service import _env, admin_reload, start_server, wait_ready

pytestmark = pytest.mark.integration

MODEL = "labelloop-chat"
MAX_PROMPT, MAX_NEW, MAX_CONCURRENT = 48, 40, 24
PROMPT = "hello how are you"


def register_generation_version(settings, seed: int, champion: bool) -> str:
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        bundle = tiny_generation_bundle(Path(tmp) / "bundle", seed=seed)
        model = AutoModelForCausalLM.from_pretrained(bundle)
        torch.manual_seed(seed)
        with torch.no_grad():  # wide random weights: varied, version-specific greedy text
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.normal_(0, 0.3)
        model.save_pretrained(bundle)
        experiment_id = registry.ensure_experiment(settings)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"tiny-gen-{seed}") as run:
            mlflow.log_artifacts(str(bundle), registry.BUNDLE_ARTIFACT_PATH)
    mv = registry.register_bundle(settings, run.info.run_id)
    if champion:
        registry.set_champion(settings, mv.version)
    return str(mv.version)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("gen-serving")
    settings = load_settings(overrides={"data_dir": str(data_dir),
                                        "registry": {"model_name": MODEL}}, environ={})
    v1 = register_generation_version(settings, seed=0, champion=True)
    v2 = register_generation_version(settings, seed=1, champion=False)
    port = free_port()
    log_path = data_dir / "server.log"
    env = _env(data_dir, LABELLOOP__REGISTRY__MODEL_NAME=MODEL,
               LABELLOOP__SERVING__POLL_INTERVAL_S="0",  # reloads only when the test asks
               LABELLOOP__SERVING__GENERATION__SLOTS="8",
               LABELLOOP__SERVING__GENERATION__MAX_PROMPT_TOKENS=str(MAX_PROMPT),
               LABELLOOP__SERVING__GENERATION__MAX_NEW_TOKENS=str(MAX_NEW),
               LABELLOOP__SERVING__GENERATION__DEFAULT_MAX_NEW_TOKENS="8",
               LABELLOOP__SERVING__GENERATION__MAX_CONCURRENT_REQUESTS=str(MAX_CONCURRENT),
               LABELLOOP__SERVING__GENERATION__MAX_PROMPTS_PER_REQUEST="64",
               # long enough that a 20-token stream is coalesced on any box (first token, rest)
               LABELLOOP__SERVING__GENERATION__STREAM_INTERVAL_MS="500",
               LABELLOOP__SERVING__GENERATION__ENGINE_PROCESS="true")
    proc = start_server(env, port, log_path)
    url = f"http://127.0.0.1:{port}"
    engines: set[int] = set()  # every engine process seen: none may outlive the service
    try:
        wait_ready(proc, url, log_path, timeout=180)
        yield {"url": url, "settings": settings, "v1": v1, "v2": v2, "log": log_path,
               "data_dir": data_dir, "engines": engines}
    finally:
        stop_process_group(proc)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in engines) and time.monotonic() < deadline:
        time.sleep(0.2)
    leaked = [p for p in engines if _alive(p)]
    for p in leaked:
        os.kill(p, signal.SIGKILL)
    assert engines and not leaked, f"engine processes {leaked} outlived the service"
    # stopping the service (SIGTERM to its process group) is no engine crash: only the one
    # the test caused is logged
    log = log_path.read_text(errors="replace")
    assert log.count("the generation engine process of") == 1, log[-3000:]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def engine_pid(server) -> int:
    """The engine process now serving (recorded for the leak check at the end)."""
    meta = httpx.get(f"{server['url']}/metadata", timeout=30).json()
    pid = meta["generation"]["engine_pid"]
    assert pid and pid != meta["worker_pid"] and _alive(pid)
    server["engines"].add(pid)
    return pid


def gen(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/generate", json=body, timeout=60)


def sse_events(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_generate_prompt_messages_and_bulk(server):
    url = server["url"]
    engine_pid(server)
    r = gen(url, prompt=PROMPT, max_new_tokens=12, ignore_eos=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == server["v1"]
    assert body["finish_reason"] == "length" and body["completion_tokens"] == 12
    assert isinstance(body["text"], str) and body["text"].strip()
    assert gen(url, prompt=PROMPT, max_new_tokens=12, ignore_eos=True).json()["text"] == body["text"]
    # the same prompt as one user turn of chat messages is the same model input
    msgs = gen(url, messages=[{"role": "user", "content": PROMPT}], max_new_tokens=12,
               ignore_eos=True).json()
    assert msgs["text"] == body["text"] and msgs["prompt_tokens"] == body["prompt_tokens"]
    # default max_new_tokens from settings; stop strings cut the text and end the request
    assert gen(url, prompt=PROMPT, ignore_eos=True).json()["completion_tokens"] == 8
    stop = body["text"][4:7]
    cut = gen(url, prompt=PROMPT, max_new_tokens=12, ignore_eos=True, stop=[stop]).json()
    assert cut["finish_reason"] == "stop" and stop not in cut["text"]
    assert body["text"].startswith(cut["text"])
    # bulk: many prompts in one call, answers in order
    prompts = [f"prompt {i}" for i in range(40)]
    bulk = gen(url, prompts=prompts, max_new_tokens=5, ignore_eos=True).json()
    assert len(bulk["results"]) == 40 and bulk["completion_tokens"] == 200
    single = gen(url, prompt=prompts[17], max_new_tokens=5, ignore_eos=True).json()
    assert bulk["results"][17]["text"] == single["text"]
    # sampling: temperature and top_p are honoured (top_p tiny = greedy)
    assert gen(url, prompt=PROMPT, max_new_tokens=12, ignore_eos=True, temperature=1.5,
               top_p=1e-9).json()["text"] == body["text"]


def test_streaming_matches_the_plain_answer(server):
    url = server["url"]
    plain = gen(url, prompt=PROMPT, max_new_tokens=20, ignore_eos=True).json()
    with httpx.stream("POST", f"{url}/generate", timeout=60, json={
            "prompt": PROMPT, "max_new_tokens": 20, "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    *pieces, last = events
    assert len(pieces) >= 2, "tokens came in one piece: not streamed"
    # one event per stream_interval_ms after the first: events hold several tokens each
    assert len(pieces) < 10, f"{len(pieces)} events for 20 tokens: not coalesced"
    assert "".join(e["text"] for e in pieces) == plain["text"] == last["text"]
    assert last["done"] and last["model_version"] == server["v1"]
    assert last["completion_tokens"] == 20 and last["finish_reason"] == "length"


def test_openai_client_unchanged(server):
    import openai

    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key="unused", max_retries=0)
    plain = gen(server["url"], prompt=PROMPT, max_new_tokens=10, ignore_eos=True,
                temperature=0).json()
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                          "content": PROMPT}], max_tokens=10, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert chat.choices[0].message.content == plain["text"]
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 10
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=10,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain["text"]
    assert chunks[-1].usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    comp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    raw = gen(server["url"], prompt=PROMPT, raw=True, max_new_tokens=6).json()
    assert comp.choices[0].text == raw["text"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True))
    assert streamed == raw["text"]
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.BadRequestError, match="max_new_tokens"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=MAX_NEW + 1)
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       n=2)
    with pytest.raises(openai.BadRequestError, match="tokens"):
        client.completions.create(model=MODEL, prompt="hello " * 200, max_tokens=2)


async def _concurrent(url: str, n: int, long_tokens: int, short_tokens: int) -> list:
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(i: int):
            k = long_tokens if i % 2 == 0 else short_tokens
            t0 = time.perf_counter()
            r = await client.post(f"{url}/generate", json={
                "prompt": f"{PROMPT} {i}", "max_new_tokens": k, "ignore_eos": True})
            return i, k, r.status_code, r.json(), time.perf_counter() - t0
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_concurrent_requests_share_decoding_steps(server):
    url = server["url"]
    before = httpx.get(f"{url}/metadata").json()["generation"]["stats"]
    results = asyncio.run(_concurrent(url, 20, MAX_NEW, 2))
    assert [s for _, _, s, _, _ in results] == [200] * 20
    assert all(b["completion_tokens"] == k for _, k, _, b, _ in results)
    after = httpx.get(f"{url}/metadata").json()["generation"]
    assert after["stats"]["largest_step"] > 1  # requests were decoded together
    steps = after["stats"]["steps"] - before["steps"]
    assert steps < 20 * MAX_NEW / 2, steps  # far fewer steps than one request at a time
    # short requests do not wait for long ones: they finish well before the long ones
    short = sorted(t for _, k, _, _, t in results if k == 2)
    long = sorted(t for _, k, _, _, t in results if k == MAX_NEW)
    assert short[len(short) // 2] < long[len(long) // 2]


def test_bad_input_gets_clear_4xx_and_the_service_keeps_serving(server):
    url = server["url"]
    cases = [
        ({"prompt": ""}, 422, "empty"),
        ({"prompt": "   "}, 422, "empty"),
        ({"prompt": "hello " * 200}, 413, "max_prompt_tokens"),
        ({"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": MAX_NEW + 1}, 422, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": "ten"}, 422, "integer"),
        ({"prompt": "x", "temperature": -0.1}, 422, "temperature"),
        ({"prompt": "x", "temperature": 2.5}, 422, "temperature"),
        ({"prompt": "x", "top_p": 0}, 422, "top_p"),
        ({"prompt": "x", "colour": "red"}, 422, "unknown field"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, 422, "exactly one"),
        ({"messages": [{"role": "robot", "content": "y"}]}, 422, "messages[0]"),
        ({"prompts": ["a"] * 65}, 413, "max_prompts_per_request"),
        ({"prompts": ["a", "b"], "stream": True}, 422, "stream"),
        ({"prompt": "x", "stop": ["a"] * 5}, 422, "stop"),
        ([1, 2], 422, "JSON object"),
    ]
    for body, status, words in cases:
        r = httpx.post(f"{url}/generate", json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["error"], (body, r.text)
    r = httpx.post(f"{url}/generate", content=b'{"prompt": "\\ud800"}', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "surrogate" in r.json()["error"], r.text
    r = httpx.post(f"{url}/generate", content=b'{"prompt": "x",', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = httpx.post(f"{url}/generate", content=b'{"prompt": "x"}', timeout=30,
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/classify", json={"text": "x"})
    assert r.status_code == 409 and "/generate" in r.json()["error"]
    assert gen(url, prompt=PROMPT, max_new_tokens=3).status_code == 200
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_concurrent_request_limit_answers_429(server):
    results = asyncio.run(_concurrent(server["url"], 3 * MAX_CONCURRENT, MAX_NEW, MAX_NEW))
    codes = [s for _, _, s, _, _ in results]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    refused = next(b for _, _, s, b, _ in results if s == 429)
    assert "max_concurrent_requests" in refused["error"]


def test_prediction_log_records_prompts_and_outputs(server):
    marker = "log me please"
    out = gen(server["url"], prompt=marker, max_new_tokens=6, ignore_eos=True).json()
    path = server["data_dir"] / "predictions.sqlite"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in read_predictions(path, limit=500) if r.text == marker]
        if rows:
            break
        time.sleep(0.2)
    assert rows, "the generation was not logged"
    row = rows[0]
    assert row.source == "generate" and row.output == out["text"]
    assert row.model_version == out["model_version"]
    assert row.details["completion_tokens"] == 6 and row.details["finish_reason"] == "length"


async def _load_until(url: str, stop: asyncio.Event, clients: int) -> list:
    seen = []
    async with httpx.AsyncClient(timeout=120) as client:
        async def worker(w: int):
            k = 0
            while not stop.is_set():
                k += 1
                body = {"prompt": PROMPT, "max_new_tokens": 16, "ignore_eos": True}
                if (w + k) % 2:  # half of them streamed
                    async with client.stream("POST", f"{url}/generate",
                                             json={**body, "stream": True}) as r:
                        raw = (await r.aread()).decode()
                    if r.status_code != 200:
                        seen.append(("error", r.status_code, raw))
                        continue
                    *pieces, last = sse_events(raw)
                    seen.append((last["model_version"], "".join(p["text"] for p in pieces),
                                 last["text"]))
                else:
                    r = await client.post(f"{url}/generate", json=body)
                    if r.status_code != 200:
                        seen.append(("error", r.status_code, r.text))
                        continue
                    seen.append((r.json()["model_version"], r.json()["text"], r.json()["text"]))
        await asyncio.gather(*(worker(w) for w in range(clients)))
    return seen


def test_hot_reload_under_load_zero_failures_and_no_mixed_versions(server):
    url, settings = server["url"], server["settings"]
    ref1 = gen(url, prompt=PROMPT, max_new_tokens=16, ignore_eos=True).json()
    assert ref1["model_version"] == server["v1"]
    old_engine = engine_pid(server)

    async def scenario():
        stop = asyncio.Event()
        load = asyncio.create_task(_load_until(url, stop, 8))
        await asyncio.sleep(1.0)
        registry.set_champion(settings, server["v2"])
        r = await asyncio.to_thread(admin_reload, url)
        assert r.status_code == 200 and r.json()["changed"], r.text
        await asyncio.sleep(1.5)
        stop.set()
        return await load

    try:
        seen = asyncio.run(scenario())
        errors = [s for s in seen if s[0] == "error"]
        assert not errors, errors[:3]
        versions = {s[0] for s in seen}
        assert versions == {server["v1"], server["v2"]}, versions
        ref2 = gen(url, prompt=PROMPT, max_new_tokens=16, ignore_eos=True).json()
        assert ref2["model_version"] == server["v2"] and ref2["text"] != ref1["text"]
        refs = {server["v1"]: ref1["text"], server["v2"]: ref2["text"]}
        for version, streamed, text in seen:  # each answer is wholly one version's
            assert text == refs[version] and streamed == text
        meta = httpx.get(f"{url}/metadata").json()
        assert meta["model_version"] == server["v2"] and meta["reloads"] == 1
        assert engine_pid(server) != old_engine
        # the retired version's process finishes what it was given, then exits (its memory
        # goes with it)
        deadline = time.monotonic() + 30
        while _alive(old_engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(old_engine), "the retired engine process did not exit"
    finally:
        registry.set_champion(settings, server["v1"])
        admin_reload(url)
        engine_pid(server)


def test_a_killed_engine_process_fails_its_requests_with_503_and_is_replaced(server):
    url = server["url"]
    want = gen(url, prompt=PROMPT, max_new_tokens=12, ignore_eos=True).json()
    pid = engine_pid(server)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            async def streamed():
                async with client.stream("POST", f"{url}/generate", json={
                        "prompt": PROMPT, "max_new_tokens": 30, "stream": True}) as r:
                    return r.status_code, sse_events((await r.aread()).decode())
            os.kill(pid, signal.SIGSTOP)  # frozen: what is submitted now stays with it
            tasks = [asyncio.create_task(client.post(f"{url}/generate", json={
                "prompt": PROMPT, "max_new_tokens": 30})), asyncio.create_task(streamed())]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # both handed to the engine process
                busy = (await client.get(f"{url}/metadata")).json()["generation"]
                if busy["waiting"] + busy["active"] == 2:
                    break
                await asyncio.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
            return await asyncio.gather(*tasks)

    plain, (stream_status, events) = asyncio.run(scenario())
    assert plain.status_code == 503 and plain.headers["retry-after"] == "1", plain.text
    assert "SIGKILL" in plain.json()["error"] and "retry" in plain.json()["error"]
    assert stream_status == 200 and "SIGKILL" in events[-1]["error"], events
    # a new engine process for the same version: not ready until it is, then the same answers
    saw_not_ready = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        saw_not_ready |= not ready
        if ready:
            break
        r = gen(url, prompt=PROMPT, max_new_tokens=2)
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            assert "a new one is starting" in r.json()["error"] and r.headers["retry-after"]
        time.sleep(0.2)
    assert saw_not_ready and ready
    again = gen(url, prompt=PROMPT, max_new_tokens=12, ignore_eos=True).json()
    assert again["text"] == want["text"] and again["model_version"] == want["model_version"]
    assert engine_pid(server) != pid
    meta = httpx.get(f"{url}/metadata").json()["generation"]
    assert meta["engine_restarts"] == 1
    log = server["log"].read_text(errors="replace")
    assert log.count("was killed by SIGKILL") == 1, log[-3000:]  # logged once

