"""Data-parallel shares and the num_processes checks (labelloop/training.py, distributed.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from labelloop import distributed, training
from labelloop.modeling import ModelError
from labelloop.settings import TrainingSettings


def _acc(rank: int, world: int):
    return SimpleNamespace(process_index=rank, num_processes=world)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_an_epoch_of_shares_covers_every_row_once(world):
    n, batch = 203, 32  # the last global batch is short
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    seen = torch.zeros(n, dtype=torch.long)
    for batch_idx in perm.split(batch):
        for rank in range(world):
            share, weight = training.rank_share(batch_idx, _acc(rank, world))
            if weight:
                seen[share] += 1
    assert seen.eq(1).all()


def test_share_weights_make_the_averaged_gradient_the_global_mean():
    # DDP averages the processes' gradients: sum_r weight_r * mean_r / world must be the mean
    # of the whole global batch, also when the shares differ in size or one is empty.
    values = torch.arange(1.0, 8.0)  # per-row "loss" of a global batch of 7
    for world in (2, 3, 4, 8):
        total = 0.0
        for rank in range(world):
            share, weight = training.rank_share(torch.arange(7), _acc(rank, world))
            total += weight * float(values[share].mean()) / world
        assert total == pytest.approx(float(values.mean()))


def test_one_process_is_the_plain_loop():
    idx = torch.arange(10)
    assert training.rank_share(idx, None) == (idx, 1.0)


def test_too_many_processes_name_the_setting():
    with pytest.raises(ModelError, match="at most .* CPU|num_processes is 4096"):
        distributed.check_processes(TrainingSettings(num_processes=4096, device="cpu"))
    with pytest.raises(ModelError, match="training.device is 'cuda:1'"):
        distributed.check_processes(TrainingSettings(num_processes=2, device="cuda:1"))
    distributed.check_processes(TrainingSettings(num_processes=1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_count_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ModelError, match="has 1 GPU.*at most 1 .*training.device: cpu"):
        distributed.check_processes(TrainingSettings(num_processes=2))
