"""CUDA graphs for the classifier's forward pass: what makes small-model serving fast on a GPU.

A MiniLM forward pass is a few hundred tiny kernels. Launched one by one from Python (eager
PyTorch) it costs 10-30 ms of CPU time whatever the batch size, while the GPU work itself is
well under a millisecond for a few hundred tweets. A CUDA graph records those launches once for
a fixed input shape and replays them with one call, so a forward pass costs the GPU time plus
about 0.1 ms.

Graphs need fixed shapes, so batches are padded up to a bucket: batch sizes are powers of two
up to `max_batch`, sequence lengths multiples of `seq_step` up to the model's max length. Every
(batch, length) pair is captured at start-up (a second or two; see `capture`). Rows added as
padding hold a single [PAD] token that attends to itself, so they produce finite, ignored
logits. Results for the real rows are identical to eager inference up to bf16 rounding.

Capture can happen while another thread serves the previous version (hot reload), so replays
run on the runner's own non-blocking stream, never the legacy default stream (work there would
break a capture in progress), and capture checks only its own thread (`thread_local`).

Transformers detects stream capture (`is_cuda_stream_capturing`) and then always builds the
attention mask instead of checking it on the host, so the captured graph is valid for any mask.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np
import torch


def batch_buckets(max_batch: int) -> list[int]:
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


def seq_buckets(max_length: int, seq_step: int = 16) -> list[int]:
    out = list(range(seq_step, max_length, seq_step))
    return out + [max_length]


def bucket(value: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if value <= b:
            return b
    raise ValueError(f"{value} is larger than the largest bucket {buckets[-1]}")


class GraphedForward:
    """Captured forward passes of one model on one GPU; `logits(ids, lengths)` is thread-safe."""

    def __init__(self, model: torch.nn.Module, max_batch: int, max_length: int,
                 pad_token_id: int, seq_step: int = 16):
        self.model = model
        self.device = next(model.parameters()).device
        self.batches = batch_buckets(max_batch)
        self.lengths = seq_buckets(max_length, seq_step)
        self.max_batch = self.batches[-1]
        self.pad_token_id = pad_token_id
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._lock = threading.Lock()  # one replay at a time: the graphs share static buffers
        self._stream = torch.cuda.Stream(self.device)  # replays: see the module docstring
        self.capture_seconds = 0.0

    @torch.inference_mode()
    def capture(self) -> "GraphedForward":
        t0 = time.perf_counter()
        # One static input pair of the largest shape; every graph reads a view of it. One
        # memory pool shared by all graphs, captured largest first so smaller ones reuse it.
        ids = torch.full((self.max_batch, self.lengths[-1]), self.pad_token_id,
                         dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        mask[:, 0] = 1
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up (cuBLAS handles, lazy init) off the capture
            for _ in range(2):
                self.model(input_ids=ids[:1, :16], attention_mask=mask[:1, :16])
        torch.cuda.current_stream(self.device).wait_stream(side)
        pool = None
        for b in reversed(self.batches):
            for n in reversed(self.lengths):
                graph = torch.cuda.CUDAGraph()
                i, m = ids[:b, :n], mask[:b, :n]
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    out = self.model(input_ids=i, attention_mask=m).logits
                pool = graph.pool() if pool is None else pool
                self._graphs[(b, n)] = (graph, i, m, out)
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
        return self

    def __len__(self) -> int:
        return len(self._graphs)

    def padded_shape(self, rows: int, longest: int) -> tuple[int, int]:
        """The captured (batch, length) that `rows` texts of at most `longest` tokens pad to;
        rows must not exceed max_batch, longest not the model's max length."""
        return bucket(rows, self.batches), bucket(longest, self.lengths)

    def logits(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """`ids`: a [batch, length] array of one `padded_shape` (rows past len(lengths) are
        padding), `lengths`: tokens per real row. Returns float32 logits for the real rows."""
        rows = len(lengths)
        row_lengths = np.concatenate([lengths, np.ones(ids.shape[0] - rows, dtype=lengths.dtype)])
        mask = (np.arange(ids.shape[1])[None, :] < row_lengths[:, None]).astype(np.int64)
        with self._lock, torch.cuda.stream(self._stream):
            graph, static_ids, static_mask, static_out = self._graphs[ids.shape]
            static_ids.copy_(torch.from_numpy(ids))
            static_mask.copy_(torch.from_numpy(mask))
            graph.replay()
            result = static_out[:rows].float().cpu().numpy()  # .cpu() waits for the stream
        return result
