"""Fine-tuning: a plain PyTorch loop over a Hugging Face encoder, LoRA (PEFT) or full.

A hand-rolled loop rather than `transformers.Trainer`: it is short enough to read top to bottom,
starts in a fraction of the time (which matters for the small, frequent retrains of the feedback
loop), and tokenizes once up front so the GPU is never waiting on the tokenizer.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from transformers import get_linear_schedule_with_warmup

from labelloop import modeling
from labelloop.data import SOFT_TARGETS, WEIGHT
from labelloop.evaluation import compute_metrics
from labelloop.modeling import ModelError
from labelloop.progress import step_bar
from labelloop.settings import ModelSettings, TrainingSettings
from labelloop.tasks import ClassificationTask

# Called every `log_every_steps` with (step, {"train_loss": ..., "learning_rate": ...}).
LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    model: torch.nn.Module
    tokenizer: object
    base_model: str
    steps: int
    samples_seen: int
    train_seconds: float
    final_loss: float

    settings: Optional[TrainingSettings] = None  # what ran: `auto` values resolved
    batch_size: int = 0
    class_weights: Optional[dict[str, float]] = None  # the loss weights used; None = unweighted
    # With validation rows: [{"step", "macro_f1"}, ...] per evaluation, and the step whose
    # weights were kept (training.keep_best; else the last step).
    validation_curve: list = field(default_factory=list)
    kept_step: Optional[int] = None

    @property
    def best_validation(self) -> Optional[dict]:
        return max(self.validation_curve, key=lambda e: e["macro_f1"], default=None)

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass(frozen=True)
class Plan:
    """How many optimizer steps of how many rows: the schedule fine_tune follows."""
    batch_size: int
    steps: int

    def epochs(self, rows: int) -> float:
        return self.steps * self.batch_size / max(1, rows)


# `learning_rate: auto`, per method: the best measured on the default corpus (docs/benchmarks.md,
# "Training recipe"): LoRA 5e-4 (0.8007 macro-F1 on the full corpus), full 1e-4 (on ~400 rows it
# beat the TF-IDF baseline by 1.3x, where LoRA at 5e-4 for 28 steps collapsed to the majority).
AUTO_LEARNING_RATE = {"lora": 5e-4, "full": 1e-4}


def resolve(cfg: TrainingSettings, rows: int) -> TrainingSettings:
    """`cfg` with its `auto` values made concrete for `rows` training rows: method full below
    `small_data_rows` (a few hundred rows move all weights a little better than adapters at
    a rate that makes adapters learn), LoRA from there on; the learning rate of that method."""
    method = cfg.method
    if method == "auto":
        method = "full" if rows < cfg.small_data_rows else "lora"
    lr = AUTO_LEARNING_RATE[method] if cfg.learning_rate == "auto" else cfg.learning_rate
    return cfg.model_copy(update={"method": method, "learning_rate": lr})


def plan(cfg: TrainingSettings, rows: int) -> Plan:
    """The schedule for `rows` training rows, in steps rather than epochs.

    `epochs` passes at `batch_size`, but never fewer than `min_steps` steps: batches shrink
    first (down to `min_batch_size`) so that `epochs` passes make `min_steps` steps, and only
    below that do the passes grow. 4 epochs of 400 rows at 64 rows a step are 28 steps, too
    few to move a new head off the majority class. `max_steps`, when set, is the number of steps.
    """
    batch = cfg.batch_size
    if cfg.min_steps:
        batch = min(batch, max(cfg.min_batch_size, int(rows * cfg.epochs // cfg.min_steps)))
    if cfg.max_steps:
        return Plan(batch, cfg.max_steps)
    steps = max(1, math.ceil(math.ceil(rows / batch) * cfg.epochs))
    return Plan(batch, max(steps, cfg.min_steps))


def class_weights(spec, labels: list, task: ClassificationTask) -> Optional[dict[str, float]]:
    """Loss weight per label: None for `off`; `auto`: rows / (labels x rows of that label), so
    every label weighs as much in the loss as the others (scikit-learn's "balanced"; a label
    absent from the rows gets 1.0); a mapping: as given, 1.0 for labels it does not name."""
    if spec == "off" or spec is None:
        return None
    if spec == "auto":
        counts = pd.Series([str(lab) for lab in labels]).value_counts()
        n, k = len(labels), len(task.labels)
        return {lab: (n / (k * counts[lab]) if lab in counts else 1.0) for lab in task.labels}
    unknown = sorted(set(map(str, spec)) - set(task.labels))
    if unknown:
        raise ValueError(f"training.class_weights names label(s) {unknown} that are not in "
                         f"task.labels {list(task.labels)}")
    return {lab: float(spec.get(lab, 1.0)) for lab in task.labels}


def row_weighted_loss(logits: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                      class_weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                      denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy with a weight per row (dataset.weight_column) on top of the class weights:
    sum(row weight x the row's class-weighted loss) / sum(row weight x class weight of its
    label). With every row weight 1 this is exactly `cross_entropy(..., weight=class_weight)`'s
    weighted mean. `denominator`: that sum over a larger batch (data parallel: the global
    batch, of which these rows are one process's share)."""
    per_row = torch.nn.functional.cross_entropy(logits, targets, weight=class_weight,
                                                label_smoothing=label_smoothing,
                                                reduction="none")
    if denominator is None:
        norm = row_weight if class_weight is None else row_weight * class_weight[targets]
        denominator = norm.sum()
    return (row_weight * per_row).sum() / denominator.clamp_min(1e-12)


def encode_rows(tokenizer, rows: pd.DataFrame, model_cfg: ModelSettings, device):
    """The rows' texts tokenized once into padded tensors on `device` (rows x max_length ints:
    small), and each text's length on the CPU, so a batch is trimmed to its longest text
    without a device sync."""
    enc = modeling.tokenize_padded(tokenizer, list(rows["text"]), model_cfg.max_length,
                                   model_cfg.truncation)
    return (enc["input_ids"].to(device), enc["attention_mask"].to(device),
            enc["attention_mask"].sum(dim=1))


class ValidationScorer:
    """Macro-F1 of the model on the validation rows, tokenized once, in eval mode (the model
    goes back to train mode after). The same for every process of a data-parallel run."""

    def __init__(self, rows: pd.DataFrame, task: ClassificationTask, tokenizer, model_cfg,
                 device, batch_size: int = 256):
        self.input_ids, self.attention, self.lengths = encode_rows(tokenizer, rows, model_cfg,
                                                                  device)
        self.refs = [task.encode_label(lab) for lab in rows["label"]]
        self.task, self.device, self.batch_size = task, device, batch_size

    @torch.no_grad()
    def macro_f1(self, model, use_bf16: bool) -> float:
        model.eval()
        preds = []
        for idx in torch.arange(len(self.refs)).split(self.batch_size):
            width = int(self.lengths[idx].max())
            rows = idx.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=self.input_ids[rows, :width],
                               attention_mask=self.attention[rows, :width]).logits
            preds.extend(logits.argmax(dim=-1).tolist())
        model.train()
        return float(compute_metrics(self.refs, preds, self.task)["macro_f1"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_share(batch_idx: torch.Tensor, accelerator) -> tuple[torch.Tensor, float]:
    """This process's rows of a global batch (every num_processes-th one, from its rank on: the
    shares of all processes cover the batch exactly once) and the weight of its mean loss that
    makes DDP's average of the processes' gradients the gradient of the global batch's mean."""
    if accelerator is None or accelerator.num_processes == 1:
        return batch_idx, 1.0
    world, rank = accelerator.num_processes, accelerator.process_index
    share = batch_idx[rank::world]
    if len(share) == 0:  # a last batch smaller than the process count: take part, add nothing
        return batch_idx[:1], 0.0
    return share, len(share) * world / len(batch_idx)


def mean_over_processes(value: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator is None or accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.detach().float(), reduction="mean")


def _apply_lora(model, task: ClassificationTask, cfg: TrainingSettings):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
    )
    return get_peft_model(model, config)


def check_warm_start(init_bundle: Path, task: ClassificationTask) -> dict:
    """The bundle's metadata, if a warm start from it can train `task`; ModelError otherwise."""
    meta = modeling.read_bundle_meta(init_bundle)
    theirs = meta.get("task") or {}
    if theirs.get("type", "classification") != task.type or \
            list(theirs.get("labels") or []) != list(task.labels):
        raise ModelError(
            f"cannot warm-start from {init_bundle}: it is a {theirs.get('type', '?')} model for "
            f"labels {theirs.get('labels')}, the settings ask for {task.type} with labels "
            f"{list(task.labels)} (train from the base model instead: feedback.train_rule full)")
    return meta


def fine_tune(
    train: pd.DataFrame,
    task: ClassificationTask,
    model_cfg: ModelSettings,
    cfg: TrainingSettings,
    on_log: Optional[LogFn] = None,
    progress: bool = True,
    init_bundle: Optional[Path] = None,
    accelerator=None,
    validation: Optional[pd.DataFrame] = None,
) -> TrainResult:
    """Fine-tune on `train` (columns text, label) and return the trained model.

    From `model_cfg.base` with a new head; or, with `init_bundle`, a warm start: training goes on
    from that bundle's weights (the champion's, head included), with fresh LoRA adapters when the
    method is lora, so a few new labels move the model in seconds instead of a full retrain.

    With `accelerator` (an `accelerate.Accelerator`; labelloop/distributed.py starts one process
    per device), data parallel: every process draws the same shuffled global batches and trains
    on its own share of each (`rank_share`), so an epoch sees every row once and the optimizer
    takes the same steps with the same global batch as one process would.

    With `validation` rows (text, label): macro-F1 on them every `validation_every_steps`
    (default: each epoch) and at the end; `keep_best` keeps the best evaluation's weights,
    `early_stopping_patience` stops after that many evaluations without a better one.
    """
    if train.empty:
        raise ValueError("no training rows")
    cfg = resolve(cfg, len(train))
    seed_everything(cfg.seed)
    device = accelerator.device if accelerator else modeling.pick_device(cfg.device)
    if init_bundle is not None:
        meta = check_warm_start(Path(init_bundle), task)
        base = str(init_bundle)
        base_name = meta.get("base_model", model_cfg.base)
    else:
        base = modeling.resolve_base_model(model_cfg.base)
        base_name = model_cfg.base
    tokenizer = modeling.load_tokenizer(base)
    model = modeling.load_base_classifier(
        base, task, init=model_cfg.init if init_bundle is None else "pretrained",
        scratch_config=model_cfg.scratch_config, tokenizer=tokenizer,
        # a warm start reads its texts as the bundle was trained to
        pooling=model_cfg.pooling if init_bundle is None else "auto")
    if cfg.method == "lora":
        model = _apply_lora(model, task, cfg)
    model.to(device)

    # Tokenize once into padded tensors; each batch is then trimmed to its own longest text.
    input_ids, attention, lengths = encode_rows(tokenizer, train, model_cfg, device)
    labels = torch.tensor([task.encode_label(lab) for lab in train["label"]], device=device)
    n = len(input_ids)
    schedule = plan(cfg, n)
    total_steps = schedule.steps
    weights = class_weights(cfg.class_weights, list(train["label"]), task)
    weight_tensor = None if weights is None else torch.tensor(
        [weights[lab] for lab in task.labels], dtype=torch.float32, device=device)
    # Per-row weights (dataset.weight_column: the frame's `weight` column), times the class's.
    row_weights = None
    if WEIGHT in train.columns:
        row_weights = torch.tensor(train[WEIGHT].to_numpy(dtype=np.float32), device=device)
        if not bool((row_weights > 0).any()) or bool((row_weights < 0).any()):
            raise ValueError("row weights must be >= 0 with at least one above 0")
        row_norm = row_weights if weight_tensor is None else row_weights * weight_tensor[labels]
    # Soft targets (data.SOFT_TARGETS): the loss fits those probabilities, not the one label.
    soft = None
    if SOFT_TARGETS in train.columns:
        if row_weights is not None:
            raise ValueError("soft targets and per-row weights together are not supported")
        soft = torch.tensor(np.stack(train[SOFT_TARGETS].to_numpy()), dtype=torch.float32,
                            device=device)
        if soft.shape != (n, len(task.labels)) or bool((soft < 0).any()) or \
                not torch.allclose(soft.sum(dim=1), torch.ones(n, device=device), atol=1e-3):
            raise ValueError(f"soft targets must be {len(task.labels)} probabilities per row "
                             "that sum to 1")

    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for the whole update on CUDA (the step is launch-bound at these sizes).
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )
    if accelerator is not None:  # DDP wraps the model; gradients are averaged over processes
        model, optimizer = accelerator.prepare(model, optimizer)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    generator = torch.Generator().manual_seed(cfg.seed)
    scorer = None if validation is None or validation.empty else ValidationScorer(
        validation, task, tokenizer, model_cfg, device)
    every = cfg.validation_every_steps or math.ceil(n / schedule.batch_size)
    curve, best_score, best_state, stale = [], -1.0, None, 0
    # The weights the optimizer moves: all of them (full) or the adapters and head (LoRA).
    named_trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def validate(at_step: int) -> bool:
        """Score, remember the best weights; True when early stopping says stop."""
        nonlocal best_score, best_state, stale
        value = scorer.macro_f1(model, use_bf16)
        curve.append({"step": at_step, "macro_f1": value})
        if on_log is not None:
            on_log(at_step, {"validation_macro_f1_at_step": value})
        if value > best_score:
            best_score, stale = value, 0
            if cfg.keep_best:
                best_state = (at_step, [p.detach().clone() for _, p in named_trainable])
        else:
            stale += 1
        return bool(cfg.early_stopping_patience) and stale >= cfg.early_stopping_patience

    model.train()
    step, seen, loss_value, running = 0, 0, float("nan"), []
    bar = step_bar(total_steps, f"fine-tune ({cfg.method}, {device.type})", enabled=progress)
    start = time.perf_counter()
    while step < total_steps:
        for batch_idx in torch.randperm(n, generator=generator).split(schedule.batch_size):
            if step >= total_steps:
                break
            global_size, global_idx = len(batch_idx), batch_idx
            batch_idx, weight = rank_share(batch_idx, accelerator)
            width = int(lengths[batch_idx].max())
            rows = batch_idx.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=input_ids[rows, :width],
                               attention_mask=attention[rows, :width]).logits
            # In fp32, with the class weights (training.class_weights) when there are any.
            if row_weights is None:
                loss = torch.nn.functional.cross_entropy(logits.float(),
                                                         labels[rows] if soft is None
                                                         else soft[rows],
                                                         weight=weight_tensor,
                                                         label_smoothing=cfg.label_smoothing)
            else:  # the global batch's weighted mean (this share's part of it, scaled like
                # the unweighted mean of a share: see rank_share)
                loss = row_weighted_loss(
                    logits.float(), labels[rows], row_weights[rows], weight_tensor,
                    cfg.label_smoothing, denominator=row_norm[global_idx.to(device)].sum()
                ) * (global_size / len(batch_idx))
            if accelerator is not None:
                accelerator.backward(loss * weight)
                accelerator.clip_grad_norm_(trainable, 1.0)
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += global_size
            running.append(loss.detach())
            if step % cfg.log_every_steps == 0 or step == total_steps:
                loss_value = float(mean_over_processes(torch.stack(running).mean(), accelerator))
                running.clear()
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if on_log is not None:
                    on_log(step, {"train_loss": loss_value,
                                  "learning_rate": scheduler.get_last_lr()[0]})
            bar.update(1)
            if scorer is not None and (step % every == 0 or step == total_steps):
                if validate(step):
                    total_steps = step  # early stopping: the loops end here
                bar.set_postfix(loss=f"{loss_value:.4f}", val_f1=f"{curve[-1]['macro_f1']:.4f}")
    kept_step = step
    if best_state is not None and best_state[0] != step:
        kept_step = best_state[0]
        with torch.no_grad():
            for (_, p), saved in zip(named_trainable, best_state[1]):
                p.copy_(saved)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    bar.close()
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    model.eval()
    return TrainResult(model=model, tokenizer=tokenizer, base_model=base_name, steps=step,
                       samples_seen=seen, train_seconds=elapsed, final_loss=loss_value,
                       settings=cfg, batch_size=schedule.batch_size, class_weights=weights,
                       validation_curve=curve, kept_step=kept_step if curve else None)
