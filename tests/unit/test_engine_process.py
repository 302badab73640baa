"""The generation engine in a process of its own (labelloop/engine_process.py), with a real
spawned child on the CPU and a tiny random Llama: the proxy's answers equal the in-thread
engine's, one message per engine iteration, cancel, Overloaded, a killed child, retire, and a
child whose parent is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from labelloop.engine_process import EngineProcess
from labelloop.generation_engine import (EngineClosed, EngineDied, EngineUnavailable, GenRequest,
                                         Generator, Overloaded, Sampling)
from labelloop.settings import load_settings
from services.generation_api import deltas
from services.runtime import engine_in_own_process
from tests.helpers import REPO_ROOT, tiny_generation_bundle

# room for a long request: a cancel arrives long before it could finish on its own
LIMITS = dict(slots=4, max_prompt_tokens=64, max_new_tokens=448)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_generation_bundle(tmp_path_factory.mktemp("gen") / "b", seed=3)


@pytest.fixture(scope="module")
def in_thread(bundle):
    g = Generator(bundle, device="cpu", version="1", **LIMITS)
    yield g
    g.engine.close()


@pytest.fixture(scope="module")
def proc(bundle):
    # a long stream interval: a stream is woken for its first token and when it finishes
    g = Generator(bundle, device="cpu", version="1", stream_interval_s=60.0,
                  engine_process=True, **LIMITS)
    assert isinstance(g.engine, EngineProcess)
    yield g
    g.engine.close()
    assert not g.engine._proc.is_alive()


def run(gen, prompts: list[str], lengths: list[int], stream: bool = True):
    """Requests submitted together, read as the HTTP handlers read them."""
    async def go():
        reqs = [GenRequest(gen.encode(p), Sampling(n, ignore_eos=True), stream=stream)
                for p, n in zip(prompts, lengths)]
        gen.engine.submit(reqs)

        async def read(r):
            return "".join([piece async for piece in deltas(gen, r)])
        texts = await asyncio.gather(*(read(r) for r in reqs))
        return reqs, texts
    return asyncio.run(go())


def test_streams_equal_the_in_thread_engine_one_message_per_iteration(proc, in_thread):
    prompts = [f"prompt number {i} " + "x " * i for i in range(7)]
    lengths = [3, 40, 5, 17, 1, 25, 9]  # more requests than slots: some wait, then join
    ref, ref_texts = run(in_thread, prompts, lengths)
    got, texts = run(proc, prompts, lengths)
    for r, want, text, want_text, n in zip(got, ref, texts, ref_texts, lengths):
        assert r.finish_reason == "length" and r.tokens == want.tokens and len(r.tokens) == n
        assert text == want_text == in_thread.decode(r.tokens)
        assert r.t_first is not None and r.t_first >= r.t_submit
    # one message per engine iteration for all the requests it wakes, not one per token:
    # 4 requests admitted in one prefill and finishing at the same step are 2 messages
    applied = []
    real = proc.engine._apply
    proc.engine._apply = lambda updates, progress: (applied.append(len(updates)),
                                                    real(updates, progress))
    try:
        got, _ = run(proc, [f"same {i}" for i in range(4)], [12] * 4)
    finally:
        del proc.engine._apply
    assert all(len(r.tokens) == 12 for r in got)
    assert applied == [4, 4], applied
    assert [r.wakeups for r in got] == [2] * 4
    info = proc.info()
    assert info["engine_pid"] == proc.engine.pid != os.getpid()
    assert info["engine"] == "continuous batching" and info["kv_cache_mb"] > 0
    assert info["stats"]["largest_step"] == 4 and info["active"] == info["waiting"] == 0


def test_cancel_reaches_the_child(proc):
    async def go():
        r = GenRequest(proc.encode("a long one"), Sampling(440, ignore_eos=True), stream=True)
        proc.engine.submit([r])
        await r.changed()  # the first token
        r.cancel()
        while not r.done:
            await r.changed()
        return r
    r = asyncio.run(go())
    assert r.finish_reason == "cancelled" and len(r.tokens) < 440
    assert not proc.engine._reqs  # the proxy forgot it
    ok = GenRequest(proc.encode("after"), Sampling(3, ignore_eos=True), blocking=True)
    proc.engine.submit([ok])
    assert ok.wait(30) and len(ok.tokens) == 3


def test_submit_answers_overloaded_and_too_long_synchronously(proc, monkeypatch):
    monkeypatch.setattr(proc.engine, "max_waiting", 2)
    p = proc.encode("x")
    with pytest.raises(Overloaded, match="max_waiting=2"):
        proc.engine.submit([GenRequest(p, Sampling(2), blocking=True) for _ in range(3)])
    with pytest.raises(ValueError, match="exceeds"):
        proc.engine.submit([GenRequest(list(range(1, 500)), Sampling(40), blocking=True)])
    assert not proc.engine._reqs  # nothing half-submitted
    two = [GenRequest(p, Sampling(2, ignore_eos=True), blocking=True) for _ in range(2)]
    proc.engine.submit(two)
    assert all(r.wait(30) and len(r.tokens) == 2 for r in two)


def test_submit_never_waits_on_a_child_that_stops_reading(proc, monkeypatch):
    """A frozen child (here SIGSTOP) stops reading the pipe; submissions fill it. They must not
    block the caller (the event loop: every request of the worker would freeze with it), and
    once the child runs again every request is served, in order."""
    engine = proc.engine
    monkeypatch.setattr(engine, "max_waiting", 10**6)
    prompt = [7, 11, 13] * 160  # ~1 KB a message: 1,500 of them are more than the pipe holds
    reqs = [GenRequest(prompt, Sampling(1, ignore_eos=True), blocking=True) for _ in range(1500)]
    os.kill(engine.pid, signal.SIGSTOP)
    try:
        submitter = threading.Thread(target=lambda: [engine.submit([r]) for r in reqs],
                                     daemon=True)
        submitter.start()
        submitter.join(10)
        blocked = submitter.is_alive()
    finally:
        os.kill(engine.pid, signal.SIGCONT)
    assert not blocked, "submit waited on the pipe of a child that was not reading"
    assert all(r.wait(60) for r in reqs)
    assert all(r.finish_reason == "length" and len(r.tokens) == 1 for r in reqs)


def test_a_killed_child_fails_its_requests_and_a_new_one_takes_over(proc, in_thread):
    engine = proc.engine
    old = engine.pid
    want = GenRequest(in_thread.encode("again"), Sampling(6, ignore_eos=True), blocking=True)
    in_thread.engine.submit([want])
    os.kill(old, signal.SIGSTOP)  # frozen: what is submitted now is held by the child
    held = [GenRequest(proc.encode(f"held {i}"), Sampling(8, ignore_eos=True), blocking=True)
            for i in range(3)]
    engine.submit(held)
    os.kill(old, signal.SIGKILL)
    for r in held:
        assert r.wait(30), "a request of the killed child hangs"
        assert r.finish_reason == "error" and isinstance(r.error, EngineDied)
        assert "SIGKILL" in str(r.error)
    # while the new child loads: not ready, and submit says why (HTTP 503)
    assert not engine.ready
    with pytest.raises(EngineUnavailable, match="a new one is starting"):
        engine.submit([GenRequest(proc.encode("x"), Sampling(2), blocking=True)])
    deadline = time.monotonic() + 120
    while not engine.ready and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.ready and engine.pid != old and engine.restarts == 1
    r = GenRequest(proc.encode("again"), Sampling(6, ignore_eos=True), blocking=True)
    engine.submit([r])
    assert r.wait(30) and want.wait(30) and r.tokens == want.tokens


def test_retire_serves_late_requests_then_the_process_exits(bundle):
    g = Generator(bundle, device="cpu", version="2", slots=2, max_prompt_tokens=32,
                  max_new_tokens=16, engine_process=True)
    child = g.engine._proc
    g.engine.retire(grace_s=1.0)
    late = GenRequest(g.encode("late"), Sampling(3, ignore_eos=True), blocking=True)
    g.engine.submit([late])  # within the grace period: still served by this version
    assert late.wait(30) and len(late.tokens) == 3
    g.engine._receiver.join(30)  # it reaps the child (only one thread may)
    assert child.exitcode == 0, "the retired engine's process did not exit"
    with pytest.raises(EngineClosed):
        g.engine.submit([GenRequest(g.encode("too late"), Sampling(3), blocking=True)])


PARENT = """
import sys, time
from labelloop.generation_engine import Generator
if __name__ == "__main__":
    g = Generator(sys.argv[1], device="cpu", version="1", slots=2, max_prompt_tokens=32,
                  max_new_tokens=16, engine_process=True)
    print(g.engine.pid, flush=True)
    time.sleep(600)
"""


def test_the_child_exits_when_its_parent_is_killed(bundle, tmp_path):
    import psutil

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(bundle)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the engine process outlived its parent")


def test_auto_is_a_process_on_a_gpu_and_a_thread_on_a_cpu(monkeypatch):
    # measured: on an H100 the process served 37-64% more tokens/s (docs/benchmarks.md)
    import torch

    def setting(value, device="cpu"):
        return engine_in_own_process(load_settings(overrides={"serving": {
            "device": device, "generation": {"engine_process": value}}}, environ={}))
    assert setting("auto") is False and setting("auto", "cuda") is True
    assert setting("auto", "cuda:1") is True
    assert setting(True) is True and setting(False, "cuda") is False and setting(False) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert setting("auto", "auto") is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert setting("auto", "auto") is True
