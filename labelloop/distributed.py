"""Fine-tuning on several devices: `training.num_processes` data-parallel processes.

`fine_tune` here has the signature of `labelloop.training.fine_tune` and is what the pipelines
call. With one process (the default) it is that function. With N it starts N processes through
`accelerate launch` (one per GPU, or N CPU processes talking over gloo when there is no GPU or
`training.device` is cpu), each running the same loop with an `Accelerator`
(`training.fine_tune(..., accelerator=...)`: every process takes its share of each global
batch, gradients are averaged). The first process saves the trained model and the loss records;
this process reads them back, reports the loss records through `on_log` once (so MLflow gets one
series, from the step's own run) and returns the model like a one-process run would.

Why `accelerate launch` from the step rather than ZenML's `run_with_accelerate`: that helper
lives in ZenML's Hugging Face integration, whose requirements do not resolve beside the
project's (FACTS.md). The launch is a plain child process, so it works the same inside a
ZenML step container, on a Kubernetes pod with N GPUs, or from `labelloop train`.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pandas as pd
import torch

from labelloop import modeling
from labelloop.modeling import ModelError
from labelloop.settings import ModelSettings, TrainingSettings
from labelloop.tasks import ClassificationTask

# labelloop.training (and peft, through transformers' optimization module) is imported where a
# fine-tune starts, so `labelloop train` with a bad input fails before it loads.
if TYPE_CHECKING:
    from labelloop import training

JOB_FILE = "job.pkl"
RESULT_FILE = "result.json"
MODEL_DIR = "model"


@dataclass
class _Job:
    train: pd.DataFrame
    task: ClassificationTask
    model_cfg: ModelSettings
    cfg: TrainingSettings
    init_bundle: Optional[str]
    progress: bool
    validation: Optional[pd.DataFrame] = None


def uses_cpu(cfg: TrainingSettings) -> bool:
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def check_processes(cfg: TrainingSettings) -> None:
    """ModelError, naming the setting to change, when `num_processes` does not fit this machine."""
    n = cfg.num_processes
    if n == 1:
        return
    if cfg.device.startswith("cuda:"):
        raise ModelError(f"training.num_processes is {n} but training.device is {cfg.device!r}, "
                         "one GPU: set training.device to auto (or cuda) to use GPUs 0.."
                         f"{n - 1}, or training.num_processes to 1")
    if uses_cpu(cfg):
        cores = os.cpu_count() or 1
        if n > cores:
            raise ModelError(f"training.num_processes is {n} but this machine has {cores} CPU "
                             f"cores (and no GPU in use): set training.num_processes to at "
                             f"most {cores}")
        return
    gpus = torch.cuda.device_count()
    if n > gpus:
        raise ModelError(f"training.num_processes is {n} but this machine has {gpus} GPU(s): "
                         f"set training.num_processes to at most {gpus} (one process per GPU), "
                         "or training.device: cpu for CPU processes")


def fine_tune(
    train: pd.DataFrame,
    task: ClassificationTask,
    model_cfg: ModelSettings,
    cfg: TrainingSettings,
    on_log: Optional[training.LogFn] = None,
    progress: bool = True,
    init_bundle: Optional[Path] = None,
    validation: Optional[pd.DataFrame] = None,
) -> training.TrainResult:
    """`training.fine_tune`, spread over `cfg.num_processes` processes when that is above 1."""
    from labelloop import training

    if cfg.num_processes == 1:
        return training.fine_tune(train, task, model_cfg, cfg, on_log=on_log, progress=progress,
                                  init_bundle=init_bundle, validation=validation)
    check_processes(cfg)
    if train.empty:
        raise ValueError("no training rows")
    with tempfile.TemporaryDirectory(prefix="labelloop-ddp-") as tmp:
        work = Path(tmp)
        job = _Job(train.reset_index(drop=True), task, model_cfg, cfg,
                   str(init_bundle) if init_bundle else None, progress, validation)
        (work / JOB_FILE).write_bytes(pickle.dumps(job))
        _launch(work, cfg)
        result = json.loads((work / RESULT_FILE).read_text())
        for step_no, values in result["logs"]:
            if on_log is not None:
                on_log(step_no, values)
        model_dir = work / MODEL_DIR
        tokenizer = modeling.load_tokenizer(str(model_dir))
        model = modeling.load_bundle_model(model_dir)
    model.eval()
    return training.TrainResult(model=model, tokenizer=tokenizer,
                                base_model=result["base_model"], steps=result["steps"],
                                samples_seen=result["samples_seen"],
                                train_seconds=result["train_seconds"],
                                final_loss=result["final_loss"],
                                validation_curve=result["validation_curve"],
                                kept_step=result["kept_step"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(work: Path, cfg: TrainingSettings) -> None:
    n = cfg.num_processes
    env = dict(os.environ)
    if uses_cpu(cfg):
        # each CPU process gets its share of the cores (torch would take them all per process)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), "-m", "labelloop.distributed", str(work)]
    out = subprocess.run(cmd, env=env, stdout=None, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0 or not (work / RESULT_FILE).is_file():
        tail = [line for line in out.stderr.splitlines() if line.strip()][-12:]
        raise RuntimeError(f"fine-tuning on {n} processes failed (exit {out.returncode}):\n"
                           + "\n".join(tail))


def _worker(work: Path) -> None:
    """One of the N processes (`python -m labelloop.distributed WORKDIR`, under accelerate)."""
    from accelerate import Accelerator

    from labelloop import training

    job: _Job = pickle.loads((work / JOB_FILE).read_bytes())
    accelerator = Accelerator(cpu=uses_cpu(job.cfg), mixed_precision="no")
    main = accelerator.is_main_process
    logs: list = []
    result = training.fine_tune(
        job.train, job.task, job.model_cfg, job.cfg,
        on_log=(lambda step_no, values: logs.append((step_no, values))) if main else None,
        progress=job.progress and main,
        init_bundle=Path(job.init_bundle) if job.init_bundle else None,
        accelerator=accelerator, validation=job.validation)
    accelerator.wait_for_everyone()
    if main:
        modeling.save_bundle(result.model, result.tokenizer, work / MODEL_DIR, {})
        (work / RESULT_FILE).write_text(json.dumps({
            "logs": logs, "steps": result.steps, "samples_seen": result.samples_seen,
            "train_seconds": result.train_seconds, "final_loss": result.final_loss,
            "base_model": result.base_model, "processes": accelerator.num_processes,
            "validation_curve": result.validation_curve, "kept_step": result.kept_step,
        }))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
