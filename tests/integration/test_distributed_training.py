"""Data-parallel fine-tuning through accelerate, on the CPU: 2 processes over gloo against 1.

The same rows, steps and global batch: the two-process run takes the same optimizer steps over
the same samples, reports its loss records once, and its model has the same shape and nearly
the same quality as the one-process model (dropout masks differ between the two, so the
weights are close, not equal).
"""

from __future__ import annotations

import numpy as np
import pytest

from labelloop import data, distributed
from labelloop.modeling import ModelError
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

pytestmark = pytest.mark.integration


def _setup(rows: int = 192):
    settings = Settings(model={"max_length": 32},
                        training={"method": "full", "epochs": 1, "batch_size": 32, "min_steps": 0,
                                  "learning_rate": 1e-4, "log_every_steps": 3, "device": "cpu"})
    task = task_from_settings(settings)
    frame = data.load_labelled(settings.dataset, task)
    frame = frame.sample(n=rows + 150, random_state=0).reset_index(drop=True)
    return settings, task, frame.iloc[:rows], frame.iloc[rows:]


def _accuracy(result, test) -> float:
    import torch

    enc = result.tokenizer(list(test["text"]), truncation=True, max_length=32, padding=True,
                           return_tensors="pt")
    with torch.no_grad():
        pred = result.model(**enc).logits.argmax(-1).numpy()
    gold = np.array([task_labels.index(v) for v in test["label"]])
    return float((pred == gold).mean())


task_labels: list[str] = []


def test_two_cpu_processes_match_one():
    settings, task, train, test = _setup()
    task_labels[:] = task.labels
    logs1, logs2 = [], []
    one = distributed.fine_tune(train, task, settings.model, settings.training, progress=False,
                                on_log=lambda s, v: logs1.append((s, v)))
    cfg2 = settings.training.model_copy(update={"num_processes": 2})
    two = distributed.fine_tune(train, task, settings.model, cfg2, progress=False,
                                on_log=lambda s, v: logs2.append((s, v)))
    # each row once per epoch, the same optimizer steps with the same global batch
    assert one.steps == two.steps == 6
    assert one.samples_seen == two.samples_seen == len(train)
    # loss records reported once, for the same steps
    assert [s for s, _ in logs1] == [s for s, _ in logs2] == [3, 6]
    # the saved bundle: the same parameters, the same shapes
    sd1, sd2 = one.model.state_dict(), two.model.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(sd1[k].shape == sd2[k].shape for k in sd1)
    # close in quality: the loss curves and held-out accuracy agree
    for (_, a), (_, b) in zip(logs1, logs2):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.1, (logs1, logs2)
    acc1, acc2 = _accuracy(one, test), _accuracy(two, test)
    assert abs(acc1 - acc2) < 0.06, (acc1, acc2)


def test_more_processes_than_devices_is_one_clear_error():
    settings, task, train, _ = _setup(64)
    cfg = settings.training.model_copy(update={"num_processes": 10_000})
    with pytest.raises(ModelError, match="num_processes is 10000 .* set training.num_processes"):
        distributed.fine_tune(train, task, settings.model, cfg, progress=False)


def test_two_cpu_processes_match_one_with_row_weights():
    """dataset.weight_column rows: each process's share is normalised by the global batch's
    weight, so two processes train (and log) the same weighted loss as one."""
    settings, task, train, _ = _setup(rows=128)
    train = train.assign(weight=[0.2 + (i % 5) / 5 for i in range(len(train))])
    logs1, logs2 = [], []
    distributed.fine_tune(train, task, settings.model, settings.training, progress=False,
                          on_log=lambda s, v: logs1.append((s, v)))
    cfg2 = settings.training.model_copy(update={"num_processes": 2})
    distributed.fine_tune(train, task, settings.model, cfg2, progress=False,
                          on_log=lambda s, v: logs2.append((s, v)))
    assert [s for s, _ in logs1] == [s for s, _ in logs2] == [3, 4]
    # (dropout masks differ between one and two processes: about 0.003 apart here; a share
    # scaled wrongly would be off by a factor)
    for (_, a), (_, b) in zip(logs1, logs2):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.02, (logs1, logs2)
