"""Human preferences for generation: scoring a model on them, and DPO on them.

- `preference_accuracy`: how often a model's likelihood ranks the annotator's chosen response
  above the rejected one: the mean log-probability per token of each response given the
  prompt (length-normalised, as SimPO's reward is: a summed log-probability prefers the shorter
  response whatever its content); ties count half. The same tokens training scores
  (labelloop.generation.chat).
- `dpo_tune`: TRL's `DPOTrainer` with fresh LoRA adapters (`training.lora`'s shape) on a plain
  (merged) model. With a PEFT model and no `ref_model`, TRL takes the model with its adapters
  disabled as the reference: exactly the SFT model the adapters start from. The returned model
  has the adapters merged, ready for a bundle.

Pairs are conversational rows (`prompt` as chat messages through `chat.messages_for`, `chosen` /
`rejected` as one assistant turn), so the chat template renders them as SFT and serving do.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd

from labelloop import modeling
from labelloop.generation import chat, evaluation
from labelloop.generation.training import quiet_progress
from labelloop.settings import Settings

LogFn = Callable[[int, dict[str, float]], None]


def pair_logps(model, tokenizer, pairs: pd.DataFrame, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-probability per token of the chosen and the rejected responses, one per pair."""
    prompts = list(pairs["prompt"])
    out = []
    for column in ("chosen", "rejected"):
        nll, count = evaluation.response_nll(model, tokenizer, prompts, list(pairs[column]),
                                             settings)
        out.append(-np.asarray(nll, dtype=np.float64) / np.maximum(np.asarray(count), 1))
    return out[0], out[1]


def accuracy_from_logps(chosen: np.ndarray, rejected: np.ndarray) -> float:
    if len(chosen) == 0:
        return float("nan")
    return float(((chosen > rejected) + 0.5 * (chosen == rejected)).mean())


def preference_accuracy(model, tokenizer, pairs: pd.DataFrame, settings: Settings) -> float:
    """Share of pairs whose chosen response the model finds more likely (nan without pairs)."""
    if pairs.empty:
        return float("nan")
    return accuracy_from_logps(*pair_logps(model, tokenizer, pairs, settings))


def dpo_dataset(pairs: pd.DataFrame, tokenizer, settings: Settings):
    """Conversational DPO rows; prompts cut to `generation.max_prompt_tokens` as SFT cuts them."""
    import datasets

    g = settings.generation
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        messages, _ = chat.fit_prompt(tokenizer, chat.messages_for(prompt, g.system_prompt),
                                      g.max_prompt_tokens)
        rows["prompt"].append(messages)
        rows["chosen"].append([{"role": "assistant", "content": str(chosen)}])
        rows["rejected"].append([{"role": "assistant", "content": str(rejected)}])
    return datasets.Dataset.from_dict(rows)


@dataclass
class DPOResult:
    model: object          # the plain model, LoRA merged
    steps: int
    pairs: int
    train_seconds: float
    final_loss: float
    reward_accuracy: float  # TRL's last logged rewards/accuracies (nan if none was logged)


def dpo_tune(model, tokenizer, pairs: pd.DataFrame, settings: Settings,
             on_log: Optional[LogFn] = None, progress: bool = True) -> DPOResult:
    """DPO with fresh LoRA adapters on `model` (the reference: `model` itself, unchanged)."""
    import datasets
    import torch
    from peft import LoraConfig, TaskType
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if pairs.empty:
        raise ValueError("DPO needs preference pairs; there are none")
    if hasattr(model, "merge_and_unload"):  # an SFT LoRA model: its adapters become weights
        model = model.merge_and_unload()
    cfg = settings.feedback.generation.dpo
    lora = settings.training.lora
    device = modeling.pick_device(settings.training.device)
    datasets.disable_progress_bars()
    dataset = dpo_dataset(pairs, tokenizer, settings)
    n = len(dataset)
    total_steps = max(1, math.ceil(math.ceil(n / cfg.batch_size) * cfg.epochs))
    logged: dict[str, float] = {}

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            logged.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
            if on_log is not None:
                on_log(state.global_step, {"dpo_loss": float(logs["loss"]),
                                           "dpo_reward_accuracy":
                                               float(logs.get("rewards/accuracies", 0.0))})

    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    peft_config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha,
                             lora_dropout=lora.dropout, target_modules=lora.target_modules)
    model.train()
    with tempfile.TemporaryDirectory(prefix="labelloop-dpo-") as out_dir:
        args = DPOConfig(
            output_dir=out_dir, per_device_train_batch_size=cfg.batch_size,
            num_train_epochs=cfg.epochs, max_steps=total_steps, learning_rate=cfg.learning_rate,
            beta=cfg.beta, lr_scheduler_type="linear", warmup_steps=0,
            logging_steps=max(1, min(settings.training.log_every_steps, total_steps)),
            save_strategy="no", report_to="none", bf16=use_bf16, use_cpu=device.type == "cpu",
            seed=settings.training.seed, data_seed=settings.training.seed,
            max_length=settings.model.max_length, disable_tqdm=not progress,
            dataloader_num_workers=0, max_grad_norm=1.0,
        )
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[_Log()])
        quiet_progress(trainer, f"DPO (lora, {device.type})", progress)
        start = time.perf_counter()
        state = trainer.train()
        elapsed = time.perf_counter() - start
    merged = trainer.model.merge_and_unload().eval()
    return DPOResult(model=merged, steps=state.global_step, pairs=n, train_seconds=elapsed,
                     final_loss=logged.get("loss", float(state.training_loss)),
                     reward_accuracy=logged.get("rewards/accuracies", float("nan")))
