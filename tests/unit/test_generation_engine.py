"""The generation engine: the slot decoder against the model's own forward pass, continuous
batching against transformers' greedy `generate`, joining between steps, slots running out,
cancel, stop strings, retire/close, step failures, the generate() fallback, and sampling."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from labelloop.generation_engine import (Engine, EngineClosed, GenRequest, Generator, Sampling,
                                         TextStream, cut_at_stop, sample)
from labelloop.slot_decoder import SlotDecoder, Unsupported
from tests.helpers import tiny_generation_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_generation_bundle(tmp_path_factory.mktemp("gen") / "b", seed=3)


@pytest.fixture(scope="module")
def gen(bundle):
    g = Generator(bundle, device="cpu", version="1", slots=4, max_prompt_tokens=64,
                  max_new_tokens=64)
    yield g
    g.engine.close()


def reference(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                         dtype=torch.long), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_slot_decoder_matches_the_models_forward_per_row(gen):
    model = gen.engine.model
    dec = SlotDecoder(model, slots=4, max_seq=64, cuda_graphs=False)
    a, b = gen.encode("hello how are you"), gen.encode("tell me a joke, a long one please")
    logits = dec.prefill([2, 0], [a, b])  # slots out of order, different lengths
    ref = model(input_ids=torch.tensor([a])).logits[0, -1], model(input_ids=torch.tensor([b])).logits[0, -1]
    assert torch.allclose(logits[0], ref[0], atol=1e-4) and torch.allclose(logits[1], ref[1], atol=1e-4)
    # one step: slot 0 (b) and slot 2 (a) at their own positions; slot 1 is empty
    out = dec.decode(3, [7, 0, 9], [len(b), 0, len(a)])
    with torch.no_grad():
        rb = model(input_ids=torch.tensor([b + [7]])).logits[0, -1]
        ra = model(input_ids=torch.tensor([a + [9]])).logits[0, -1]
    assert torch.allclose(out[0], rb, atol=1e-4) and torch.allclose(out[2], ra, atol=1e-4)
    assert dec.check_parity(a, steps=4) < 1e-4


def test_concurrent_requests_equal_greedy_generate_and_join_between_steps(gen):
    """More requests than slots, different lengths, some submitted while others decode: every
    output is exactly transformers' greedy output for that prompt alone."""
    prompts = [gen.encode(f"prompt number {i} " + "x " * i) for i in range(7)]
    lengths = [3, 40, 5, 17, 1, 25, 9]
    first = [GenRequest(p, Sampling(n, ignore_eos=True)) for p, n in zip(prompts[:4], lengths)]
    gen.engine.submit(first)
    time.sleep(0.05)
    later = [GenRequest(p, Sampling(n, ignore_eos=True)) for p, n in zip(prompts[4:], lengths[4:])]
    gen.engine.submit(later)
    for r in first + later:
        assert r.wait(60)
    for r, p, n in zip(first + later, prompts, lengths):
        assert r.finish_reason == "length" and len(r.tokens) == n
        assert r.tokens == reference(gen.engine.model, p, n)


def test_a_short_request_does_not_wait_for_a_long_one(gen):
    long = GenRequest(gen.encode("long one"), Sampling(60, ignore_eos=True))
    gen.engine.submit([long])
    while not long.tokens:
        time.sleep(0.001)
    short = GenRequest(gen.encode("short"), Sampling(2, ignore_eos=True))
    gen.engine.submit([short])
    assert short.wait(30)
    assert not long.done, "the short request waited for the long one"
    assert long.wait(60) and len(long.tokens) == 60


def test_cancel_frees_the_slot_and_eos_stops(gen):
    held = [GenRequest(gen.encode(f"hold {i}"), Sampling(64, ignore_eos=True)) for i in range(4)]
    gen.engine.submit(held)
    for r in held:
        r.cancel()
    after = GenRequest(gen.encode("after"), Sampling(3, ignore_eos=True))
    gen.engine.submit([after])
    assert after.wait(30) and len(after.tokens) == 3
    assert all(r.wait(30) and r.finish_reason == "cancelled" for r in held)
    # the first greedy token made an end-of-sequence token: it stops there, without it
    p = gen.encode("eos check")
    tok = reference(gen.engine.model, p, 1)[0]
    engine = gen.engine
    saved = engine.eos
    engine.eos = frozenset({tok})
    try:
        r = GenRequest(p, Sampling(10))
        engine.submit([r])
        assert r.wait(30) and r.finish_reason == "stop" and r.tokens == []
    finally:
        engine.eos = saved


def test_stop_strings_end_the_request_and_are_cut_from_the_text(gen):
    p = gen.encode("hello how are you", raw=True)  # the random model repeats " you"
    free = GenRequest(p, Sampling(12, ignore_eos=True))
    gen.engine.submit([free])
    free.wait(30)
    text = gen.decode(free.tokens)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), text
    r = GenRequest(p, Sampling(12, stop=(stop,), ignore_eos=True))
    gen.engine.submit([r])
    assert r.wait(30) and r.finish_reason == "stop" and len(r.tokens) < 12
    assert TextStream(gen.tokenizer, r).text() == cut_at_stop(text, (stop,))
    assert stop not in TextStream(gen.tokenizer, r).text()


class FakeTok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_text_stream_holds_back_a_possible_stop_string_and_partial_characters():
    r = GenRequest([1], Sampling(10, stop=("END",)), blocking=True)
    s = TextStream(FakeTok(), r)
    r.tokens += [ord(c) for c in "abE"]
    assert s.delta() == "ab"          # "E" may start "END"
    r.tokens += [ord("x")]
    assert s.delta() == "Ex"          # it did not
    r.tokens += [0xFFFD]
    assert s.delta() == ""            # an incomplete character waits for the next token
    r.tokens += [ord(c) for c in "yEN"]
    assert s.delta() == "\ufffdy"
    r.tokens += [ord("D")]
    r.finish_reason = "stop"
    assert s.delta() == ""            # the stop string itself never goes out
    assert s.text() == "abEx\ufffdy"


def test_a_request_finishing_while_its_text_is_decoded_loses_no_tokens():
    """The engine thread may append a request's last tokens and mark it done while a stream is
    decoding its text (seen under load in the hot-reload test: a stream sent "U" of a 16-token
    answer). The stream must still send the whole text."""
    import asyncio

    from services.generation_api import deltas

    async def run():
        r = GenRequest([1], Sampling(10), stream=True)

        class FinishingTok(FakeTok):
            calls = 0

            def decode(self, ids, skip_special_tokens=True):
                text = super().decode(ids)
                FinishingTok.calls += 1
                if FinishingTok.calls == 1:  # the engine, between this decode and the check
                    r.tokens += [ord(c) for c in "rest"]
                    r.finish_reason = "length"
                    r._event.set()
                return text

        gen = type("Gen", (), {"tokenizer": FinishingTok()})()
        r.tokens += [ord(c) for c in "first "]
        r._event.set()
        pieces = [piece async for piece in deltas(gen, r)]
        return r, pieces

    r, pieces = asyncio.run(asyncio.wait_for(run(), 10))
    assert "".join(pieces) == "first rest" == FakeTok().decode(r.tokens)


def test_sampling_rules():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.9], [0.0, 0.0, 9.0]])
    assert sample(logits, [0.0, 0.0, 0.0], [1.0] * 3) == [1, 0, 2]
    # top_p small keeps only the most likely token, whatever the temperature
    assert sample(logits, [1.5, 1.5, 1.5], [1e-6] * 3) == [1, 0, 2]
    torch.manual_seed(0)
    seen = {tuple(sample(logits[1:2], [1.0], [0.9])) for _ in range(200)}
    assert seen == {(0,), (2,)}  # tokens 0 and 2 reach 0.9 together; token 1 never drawn


def test_retire_serves_late_requests_then_closes(bundle):
    g = Generator(bundle, device="cpu", version="2", slots=2, max_prompt_tokens=32,
                  max_new_tokens=16)
    g.engine.retire(grace_s=0.5)
    late = GenRequest(g.encode("late"), Sampling(3, ignore_eos=True))
    g.engine.submit([late])  # within the grace period: still served by this version
    assert late.wait(30) and len(late.tokens) == 3
    g.engine._thread.join(10)
    with pytest.raises(EngineClosed):
        g.engine.submit([GenRequest(g.encode("too late"), Sampling(3))])
    assert g.engine.decoder is None  # cache and weights released


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(gen, monkeypatch):
    calls = {"n": 0}
    real = gen.engine.decoder._step  # what greedy and sampled decoding steps both call

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device fell over")
        return real(*a, **k)

    monkeypatch.setattr(gen.engine.decoder, "_step", flaky)
    r = GenRequest(gen.encode("boom"), Sampling(5, ignore_eos=True))
    gen.engine.submit([r])
    assert r.wait(30) and r.finish_reason == "error"
    ok = GenRequest(gen.encode("fine"), Sampling(5, ignore_eos=True))
    gen.engine.submit([ok])
    assert ok.wait(30) and ok.finish_reason == "length" and len(ok.tokens) == 5


def test_unsupported_architectures_fall_back_to_generate(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.helpers import tiny_causal_lm

    tok_dir = tiny_causal_lm(tmp_path / "t")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2,
                                       n_positions=128)).eval()
    with pytest.raises(Unsupported):
        SlotDecoder(model, 2, 64)
    engine = Engine(model, tok, [tok.eos_token_id], slots=4, max_seq=64, cuda_graphs=False)
    try:
        assert engine.decoder is None and "gpt2" in engine.fallback_reason
        prompts = [tok("hello how are you")["input_ids"], tok("tell me")["input_ids"]]
        reqs = [GenRequest(p, Sampling(6, ignore_eos=True)) for p in prompts]
        engine.submit(reqs)
        for r, p in zip(reqs, prompts):
            assert r.wait(60) and r.tokens == reference(model, p, 6)
    finally:
        engine.close()


def test_blocking_waiters_from_many_threads(gen):
    results = []

    def client(i):
        r = GenRequest(gen.encode(f"thread {i}"), Sampling(4, ignore_eos=True))
        gen.engine.submit([r])
        results.append(r.wait(60) and len(r.tokens) == 4)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 12


def _stream(gen, prompt: str, n: int) -> tuple[GenRequest, list[str]]:
    """One streaming request read the way the HTTP handlers read it (services.generation_api)."""
    import asyncio

    from services.generation_api import deltas

    async def run():
        r = GenRequest(gen.encode(prompt), Sampling(n, ignore_eos=True), stream=True)
        gen.engine.submit([r])
        return r, [piece async for piece in deltas(gen, r)]
    return asyncio.run(run())


def test_stream_events_carry_every_token_made_since_the_last_one(gen, monkeypatch):
    # stream_interval 0: the waiter is woken at every step, one token each
    r, pieces = _stream(gen, "one per step", 12)
    assert r.wakeups == len(r.tokens) == 12
    assert "".join(pieces) == gen.decode(r.tokens) == TextStream(gen.tokenizer, r).text()
    # a long interval: woken for the first token (time to first token unchanged) and at the
    # end, and that last event holds the eleven tokens made in between
    monkeypatch.setattr(gen.engine, "stream_interval_s", 60.0)
    r, pieces = _stream(gen, "coalesced", 12)
    assert r.wakeups == 2 and len(r.tokens) == 12
    assert 1 <= len(pieces) <= 2
    assert "".join(pieces) == gen.decode(r.tokens)


def test_text_decoder_equals_the_tokenizers_decode(gen):
    from labelloop.generation_engine import text_decoder

    fast = text_decoder(gen.tokenizer)
    g = torch.Generator().manual_seed(0)
    vocab = len(gen.tokenizer)
    for n in (1, 2, 7, 40):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        ids[0] = gen.tokenizer.eos_token_id  # a special token is skipped by both
        assert fast(ids) == gen.tokenizer.decode(ids, skip_special_tokens=True)


def _wait_steps(engine, k: int) -> None:
    start = engine.stats["steps"]
    while engine.stats["steps"] < start + k:
        time.sleep(0.001)


@pytest.mark.parametrize("interval_s, prefills", [(0.0, 3), (30.0, 1)])
def test_arrivals_while_decoding_share_one_prefill_with_an_admit_interval(bundle, interval_s,
                                                                          prefills):
    """Three requests arriving one by one while a long one decodes: at every step (0) each gets
    a prefill of its own; with an interval they wait for the next admission and share one,
    and their outputs are unchanged. An idle engine admits at once whatever the interval."""
    g = Generator(bundle, device="cpu", version="1", slots=8, max_prompt_tokens=64,
                  max_new_tokens=200, admit_interval_s=interval_s)
    try:
        long = GenRequest(g.encode("long one"), Sampling(200, ignore_eos=True))
        g.engine.submit([long])  # idle: admitted at once
        while not long.tokens:
            time.sleep(0.001)
        before = g.engine.stats["prefills"]
        prompts = [g.encode(f"arrival {i}") for i in range(3)]
        late = []
        for p in prompts:
            _wait_steps(g.engine, 2)  # each arrives after the previous one could be admitted
            late.append(GenRequest(p, Sampling(5, ignore_eos=True)))
            g.engine.submit([late[-1]])
            if interval_s == 0.0:
                while not late[-1].tokens:
                    time.sleep(0.001)
        if interval_s:  # admitted only once the interval since the first prefill has passed:
            assert not any(r.tokens for r in late)  # nothing yet (30 s), the long one decodes
            g.engine._last_admit = 0.0  # the interval is over
        for r, p in zip(late, prompts):
            assert r.wait(60) and r.tokens == reference(g.engine.model, p, 5)
        assert g.engine.stats["prefills"] - before == prefills
        assert long.wait(120) and len(long.tokens) == 200
    finally:
        g.engine.close()


def test_padded_prefill_matches_the_plain_one_and_writes_only_its_slots(gen):
    """A prefill padded to its graph bucket (as on a GPU, where the bucket is replayed as a
    CUDA graph) gives the same logits and cache rows as the plain one; its padding rows write
    only the scratch row, so slots holding other requests are untouched."""
    model = gen.engine.model
    plain = SlotDecoder(model, slots=4, max_seq=64, cuda_graphs=False)
    padded = SlotDecoder(model, slots=4, max_seq=64, cuda_graphs=False)
    padded.pad_prefill = True
    assert padded._prefill_bucket(3, 20) == (4, 32) and padded._prefill_bucket(5, 20) is None
    a, b, c = (gen.encode(t) for t in ("hi", "tell me a joke, a long one please", "why?"))
    for dec in (plain, padded):  # slot 1 holds a request already: the new ones go to 3, 0, 2
        dec.prefill([1], [c])
    kept = padded.k[:, 1].clone(), padded.v[:, 1].clone()
    out_plain = plain.prefill([3, 0, 2], [a, b, c])
    out_padded = padded.prefill([3, 0, 2], [a, b, c])
    assert out_padded.shape == out_plain.shape == (3, model.config.vocab_size)
    assert torch.allclose(out_padded, out_plain, atol=1e-4)
    for slot, p in ((3, a), (0, b), (2, c)):
        n = len(p)
        assert torch.allclose(padded.k[:, slot, :, :n], plain.k[:, slot, :, :n], atol=1e-5)
        assert torch.allclose(padded.v[:, slot, :, :n], plain.v[:, slot, :, :n], atol=1e-5)
    assert torch.equal(padded.k[:, 1], kept[0]) and torch.equal(padded.v[:, 1], kept[1])
    assert padded.k[:, padded.scratch].abs().sum() > 0  # the fourth (padding) row went there
    # decoding after a padded prefill: the same next-token logits as after the plain one
    steps = [len(b), len(c), len(c), len(a)]
    assert torch.allclose(padded.decode(4, [5, 6, 7, 8], steps),
                          plain.decode(4, [5, 6, 7, 8], steps), atol=1e-4)


def test_joined_layers_equal_the_models_modules_and_share_their_weights(bundle):
    """The decoder's joined projections and single rms_norm give the logits of the model's own
    layer modules; the modules' weights become views of the joined ones (no second copy), so
    the model's own forward pass is unchanged."""
    from labelloop.generation.bundle import load_generation_bundle

    model = load_generation_bundle(bundle, "cpu").model
    ids = torch.tensor([[5, 9, 2, 7, 11, 3]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    plain = SlotDecoder(model, slots=2, max_seq=32, cuda_graphs=False, fuse=False)
    joined = SlotDecoder(model, slots=2, max_seq=32, cuda_graphs=False)
    attn = model.model.layers[0].self_attn
    qkv_weight = joined.blocks[0].qkv[0]
    assert attn.k_proj.weight.untyped_storage().data_ptr() == \
        qkv_weight.untyped_storage().data_ptr()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    prompt = ids[0].tolist()
    assert torch.allclose(joined.prefill([1], [prompt]), plain.prefill([1], [prompt]), atol=1e-5)
    assert torch.allclose(joined.decode(2, [0, 4], [0, len(prompt)])[1],
                          plain.decode(2, [0, 4], [0, len(prompt)])[1], atol=1e-5)
