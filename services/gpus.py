"""Service workers spread over GPUs, one GPU each (`serving.gpus`).

BentoML starts `serving.workers` processes and numbers them from 1 (`server_context.
worker_index`). With `serving.gpus: N`, worker i loads its model on GPU (i - 1) mod N, so
`workers: 2N` puts two workers on every GPU. Every worker keeps the whole machine's GPUs
visible and uses one by index (`cuda:k`): BentoML's own allocator (`resources.gpu`) hands all
workers the same devices, not one each. `serving.gpus: 0` (the default) leaves every worker on
`serving.device`.
"""

from __future__ import annotations

from typing import Optional

from labelloop.settings import ConfigError, ServingSettings


def check_gpus(cfg: ServingSettings, gpu_count: int) -> None:
    """ConfigError naming the setting when `serving.gpus` cannot be honoured on this machine."""
    if cfg.gpus == 0:
        return
    if cfg.gpus > gpu_count:
        raise ConfigError(f"serving.gpus is {cfg.gpus} but this machine has {gpu_count} GPU(s): "
                          f"set serving.gpus to at most {gpu_count} (0 = all workers on "
                          "serving.device)")
    if cfg.workers < cfg.gpus:
        raise ConfigError(f"serving.gpus is {cfg.gpus} but serving.workers is {cfg.workers}: "
                          f"set serving.workers to a multiple of {cfg.gpus} (one or more "
                          "workers per GPU)")
    if cfg.device not in ("auto", "cuda"):
        raise ConfigError(f"serving.gpus is {cfg.gpus} but serving.device is {cfg.device!r}: "
                          "set serving.device to auto (or cuda)")


def worker_device(cfg: ServingSettings, worker_index: Optional[int]) -> str:
    """The device worker `worker_index` (1-based, as BentoML counts) loads its model on."""
    if cfg.gpus == 0:
        return cfg.device
    return f"cuda:{((worker_index or 1) - 1) % cfg.gpus}"
