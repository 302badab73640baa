"""A Llama-family decoder with one KV-cache row per *slot*: what continuous batching needs.

Transformers' caches share one write position across the batch (`cache_position`), so a
request cannot join a batch that is already decoding. Here every slot (a row of one
preallocated cache, `[layers, slots, kv_heads, max_seq, head_dim]`) keeps its own length:

- `prefill(rows, prompts)`: runs the new prompts alone (causal attention over themselves) and
  writes their keys/values into their slots at positions 0..len-1; returns next-token logits.
  Small prefills are padded to a (rows, length) bucket and replayed as CUDA graphs too: in an
  open loop requests arrive one or two at a time, and an eager prefill (~600 kernel launches)
  cost the engine more CPU than the decoding (docs/benchmarks.md, "Prefill as CUDA graphs").
  Padding rows write into a scratch cache row no slot uses.
- `decode(n, ids, positions)`: one token for each of slots 0..n-1; each writes its key/value at
  its own position and attends to its own prefix (a per-row mask). Slots that hold nothing
  decode a pad token into position 0 of their own row and are ignored.

The layers run the model's own weights, with fewer kernels than its modules launch: the query,
key and value projections as one matrix product (and the MLP's gate and up projections as
another; the modules' weights become views of the joined ones, so memory is not doubled), the
rotary embedding applied to queries and keys together, and RMSNorm as one `rms_norm` call
instead of eight kernels. A 135M model's step is bound by kernel count, not arithmetic
(docs/benchmarks.md, "Prefill as CUDA graphs"). `check_parity` compares the result with the
model's own forward pass at load time. Decode shapes are fixed per (rows bucket, cache-length
bucket), so on a GPU each is captured once as a CUDA graph (launching ~400 kernels per step
from Python costs more than a 135M model's whole step) and replayed.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = frozenset({"llama", "mistral", "qwen2"})
KV_STEP = 128  # cache-length buckets of decode graphs
PREFILL_MIN_LEN = 32  # prompt-length buckets of prefill graphs: 32, 64, 128, ... max_seq
PREFILL_GRAPH_ROWS = 16  # prefills of more prompts than this run eagerly (their launches are
PREFILL_GRAPH_TOKENS = 8192  # shared by many prompts), as do those past rows x length tokens


class Unsupported(ValueError):
    """A model this decoder cannot run (the engine falls back to `generate`)."""


def _pow2_buckets(n: int) -> list[int]:
    out, b = [], 1
    while b < n:
        out.append(b)
        b *= 2
    return out + [n]


def supported(config) -> str | None:
    """None when the decoder can run this config, else why not."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} (supported: {sorted(SUPPORTED_TYPES)})"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", kind == "mistral"):
        return f"sliding-window attention ({window})"
    return None


class _Layer:
    """One decoder layer's weights, joined for fewer kernels (see the module docstring)."""

    def __init__(self, layer, fuse: bool):
        a, mlp = layer.self_attn, layer.mlp
        self.o_proj, self.down_proj = a.o_proj, mlp.down_proj
        norms = layer.input_layernorm, layer.post_attention_layernorm
        self.norm1, self.norm2 = (_norm(n) for n in norms) if fuse else norms
        plain = fuse and all(type(m) is torch.nn.Linear for m in
                             (a.q_proj, a.k_proj, a.v_proj, mlp.gate_proj, mlp.up_proj))
        self.qkv = _join([a.q_proj, a.k_proj, a.v_proj]) if plain else None
        self.gate_up = _join([mlp.gate_proj, mlp.up_proj]) if plain else None
        self.act = mlp.act_fn
        self.module = layer


def _join(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several linear layers over the same input; each layer's own
    weight becomes a view of it, so the model's forward pass still works and nothing is copied
    twice."""
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears])
        biases = [m.bias for m in linears]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b if b is not None else weight.new_zeros(m.out_features)
                              for b, m in zip(biases, linears)])
        start = 0
        for m in linears:
            n = m.out_features
            m.weight = torch.nn.Parameter(weight[start:start + n], requires_grad=False)
            if m.bias is not None:
                m.bias = torch.nn.Parameter(bias[start:start + n], requires_grad=False)
            start += n
    return weight, bias


def _norm(module):
    """RMSNorm as one `F.rms_norm` call where the module is a plain RMSNorm, else the module."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if weight is None or eps is None or not type(module).__name__.endswith("RMSNorm"):
        return module
    shape = (weight.shape[0],)
    return lambda x: F.rms_norm(x, shape, weight, eps)


class SlotDecoder:
    def __init__(self, model, slots: int, max_seq: int, cuda_graphs: bool = True,
                 prefill_graphs: bool = True, fuse: bool = True):
        reason = supported(model.config)
        if reason:
            raise Unsupported(reason)
        cfg = model.config
        self.model = model
        inner = model.model
        self.embed, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.rotary, self.lm_head = inner.rotary_emb, model.lm_head
        self.hq, self.hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.blocks = [_Layer(layer, fuse) for layer in self.layers]
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.groups = self.hq // self.hkv
        self.slots, self.max_seq = int(slots), int(max_seq)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        # one row more than there are slots: the scratch row that padded prefill rows write
        self.scratch = self.slots
        shape = (len(self.layers), self.slots + 1, self.hkv, self.max_seq, self.hd)
        self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.kv_bytes = 2 * self.k.numel() * self.k.element_size()
        # Static decode inputs (CUDA graphs read them in place): ids and positions in one
        # buffer, so a step copies them in one call (each torch call drops and retakes the
        # GIL, which the event loop's thread may hold: generation_engine.py).
        self.io = torch.zeros((2, self.slots), dtype=torch.long, device=self.device)
        self.ids, self.pos = self.io[0], self.io[1]
        self.arange = torch.arange(max(self.slots, self.max_seq), device=self.device)
        self.row_buckets = _pow2_buckets(self.slots)
        self.kv_buckets = list(range(KV_STEP, self.max_seq, KV_STEP)) + [self.max_seq]
        self.prefill_row_buckets = _pow2_buckets(min(self.slots, PREFILL_GRAPH_ROWS))
        self.prefill_len_buckets = [b for b in _pow2_buckets(self.max_seq) if b >= PREFILL_MIN_LEN] \
            or [self.max_seq]
        self.graphs_on = cuda_graphs and self.device.type == "cuda"
        # pad small prefills to a bucket: on with graphs (a padded shape replays a graph); the
        # tests turn it on for the eager path to check the padding alone
        self.pad_prefill = self.graphs_on and prefill_graphs
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None
        self.capture_seconds = 0.0
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    # ---- the layer stack, shared by prefill and decode ------------------------------------
    def _run(self, x, positions, attend):
        cos, sin = self.rotary(x, positions)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [b, len, 1, head_dim]: over the heads
        b, q_len, _ = x.shape
        hq, hkv, hd = self.hq, self.hkv, self.hd
        for i, f in enumerate(self.blocks):
            h = f.norm1(x)
            if f.qkv is not None:
                qkv = F.linear(h, *f.qkv).view(b, q_len, hq + 2 * hkv, hd)
                qk = qkv[:, :, :hq + hkv]
                qk = qk * cos + _rotate_half(qk) * sin  # queries and keys in one go
                q, k, v = qk[:, :, :hq], qk[:, :, hq:], qkv[:, :, hq + hkv:]
            else:
                a = f.module.self_attn
                q = a.q_proj(h).view(b, q_len, hq, hd)
                k = a.k_proj(h).view(b, q_len, hkv, hd)
                v = a.v_proj(h).view(b, q_len, hkv, hd)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            out = attend(i, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = x + f.o_proj(out.reshape(b, q_len, hq * hd))
            h = f.norm2(x)
            if f.gate_up is not None:
                gate, up = F.linear(h, *f.gate_up).chunk(2, dim=-1)
                x = x + f.down_proj(f.act(gate) * up)
            else:
                x = x + f.module.mlp(h)
        return x

    @torch.inference_mode()
    def prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Write the prompts into slots `rows`; returns [len(rows), vocab] next-token logits."""
        b, longest = len(prompts), max(len(p) for p in prompts)
        shape = self._prefill_bucket(b, longest) if self.pad_prefill else None
        r_pad, length = shape or (b, longest)
        # one host tensor, one copy: per row the ids (right-padded: causal attention ignores
        # the padding, and decoding overwrites it), then the length and the slot
        inp = torch.zeros((r_pad, length + 2), dtype=torch.long)
        for r, p in enumerate(prompts):
            inp[r, :len(p)] = torch.as_tensor(p)
        inp[:b, length] = torch.as_tensor([len(p) for p in prompts])
        inp[:b, length + 1] = torch.as_tensor(list(rows))
        inp[b:, length], inp[b:, length + 1] = 1, self.scratch
        if shape is None or not self.graphs_on:
            return self._prefill_eager(inp.to(self.device, non_blocking=True))[:b]
        graph = self._graphs.get(("prefill", *shape))
        if graph is None:
            static = torch.empty_like(inp, device=self.device)
            static.copy_(inp, non_blocking=True)
            graph = self._capture(("prefill", *shape), lambda: (self._prefill_eager(static),),
                                  static)
        else:
            graph[-1].copy_(inp, non_blocking=True)
        graph[0].replay()
        return graph[1][:b]

    def _prefill_bucket(self, b: int, longest: int) -> tuple[int, int] | None:
        """The padded (rows, length) of a prefill replayed as a graph, or None: run it as it is."""
        if b > self.prefill_row_buckets[-1] or longest > self.prefill_len_buckets[-1]:
            return None
        shape = _bucket(b, self.prefill_row_buckets), _bucket(longest, self.prefill_len_buckets)
        return shape if shape[0] * shape[1] <= PREFILL_GRAPH_TOKENS else None

    def _prefill_eager(self, inp: torch.Tensor) -> torch.Tensor:
        """The prefill of `inp` ([rows, length + 2]: ids, then length and slot per row)."""
        b, length = inp.shape[0], inp.shape[1] - 2
        ids, lens, slot_idx = inp[:, :length], inp[:, length], inp[:, length + 1]
        positions = self.arange[:length].expand(b, length)

        def attend(i, q, k, v):
            self.k[i, slot_idx, :, :length] = k
            self.v[i, slot_idx, :, :length] = v
            if self.groups > 1:
                k, v = k.repeat_interleave(self.groups, 1), v.repeat_interleave(self.groups, 1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)

        x = self._run(self.embed(ids), positions, attend)
        last = x[self.arange[:b], lens - 1]
        return self.lm_head(self.norm(last)).float()

    def _decode_eager(self, n: int, kv: int) -> torch.Tensor:
        pos = self.pos[:n]
        rows = self.arange[:n]
        mask = (self.arange[:kv][None, :] <= pos[:, None])[:, None, None, :]

        def attend(i, q, k, v):
            self.k[i, rows, :, pos] = k[:, :, 0]
            self.v[i, rows, :, pos] = v[:, :, 0]
            # The query heads of one KV head attend as G queries of that head: no K/V copy.
            qg = q.reshape(n, self.hkv, self.groups, self.hd)
            o = F.scaled_dot_product_attention(qg, self.k[i, :n, :, :kv], self.v[i, :n, :, :kv],
                                               attn_mask=mask)
            return o.reshape(n, 1, self.hq * self.hd)

        x = self._run(self.embed(self.ids[:n, None]), pos[:, None], attend)
        return self.lm_head(self.norm(x[:, 0]))

    @torch.inference_mode()
    def decode(self, n: int, ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """One step for slots 0..n-1 (`ids[r]` written at `positions[r]`); [n, vocab] logits."""
        return self._step(n, ids, positions)[0][:n].float()

    @torch.inference_mode()
    def decode_greedy(self, n: int, ids: Sequence[int], positions: Sequence[int]) -> list[int]:
        """`decode` followed by the argmax of each row: the next token of slots 0..n-1."""
        return self._step(n, ids, positions)[1][:n].tolist()

    def _step(self, n: int, ids: Sequence[int], positions: Sequence[int]):
        rows = _bucket(n, self.row_buckets)
        kv = _bucket(max(positions) + 1, self.kv_buckets)
        io = list(ids) + [0] * (rows - n) + list(positions) + [0] * (rows - n)
        self.io[:, :rows].copy_(torch.tensor(io).view(2, rows), non_blocking=True)
        if not self.graphs_on:
            logits = self._decode_eager(rows, kv)
            return logits, logits.argmax(-1)
        graph = self._graphs.get((rows, kv))
        if graph is None:
            def step():
                out = self._decode_eager(rows, kv)
                return out, out.argmax(-1)
            graph = self._capture((rows, kv), step)
        graph[0].replay()
        return graph[1], graph[2]

    def _capture(self, key: tuple, step, *inputs: torch.Tensor) -> tuple:
        """Capture one shape of `step` (a decode or a prefill): (graph, *its outputs, *inputs).
        The warm-up runs the real step on the live inputs, so it writes exactly what the replay
        writes (capturing mid-serving is harmless). All graphs share one memory pool: they run
        one at a time, and each one's outputs are read before the next one runs."""
        t0 = time.perf_counter()
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            step()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = step()
        self._pool = graph.pool() if self._pool is None else self._pool
        self._graphs[key] = (graph, *outputs, *inputs)
        self.capture_seconds += time.perf_counter() - t0
        return self._graphs[key]

    @torch.inference_mode()
    def check_parity(self, prompt: Sequence[int], steps: int = 3) -> float:
        """Largest difference between this decoder's logits and the model's own forward pass
        over `prompt` plus `steps` greedy tokens (slot 0; it is overwritten later)."""
        tokens = list(prompt)
        logits = [self.prefill([0], [tokens])[0]]
        for _ in range(steps):
            tokens.append(int(logits[-1].argmax()))
            logits.append(self.decode(1, [tokens[-1]], [len(tokens) - 1])[0])
        ref = self.model(input_ids=torch.as_tensor([tokens], device=self.device)).logits[0].float()
        ref = ref[len(prompt) - 1:]
        mine = torch.stack(logits)
        return float((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _bucket(value: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if value <= b:
            return b
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")

