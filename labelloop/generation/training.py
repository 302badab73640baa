"""Supervised fine-tuning of a causal LM with TRL's SFTTrainer: PEFT LoRA by default, full by
config (`training.method`), bf16 on a GPU, fp32 on a CPU.

Examples are tokenized here (labelloop.generation.chat): the prompt through the model's chat
template, labels -100 on it, so the loss is on the response only (its end-of-turn token
included) and training sees exactly the context evaluation and serving build. SFTTrainer takes
such pre-tokenized rows as they are.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import pandas as pd

from labelloop import modeling
from labelloop.generation import base, chat
from labelloop.settings import Settings, TrainingSettings

LogFn = Callable[[int, dict[str, float]], None]

# `training.method: auto` and `learning_rate: auto` for this family (the classifier's are
# labelloop.training.resolve's): LoRA at 5e-4, the recipe measured on the chatterbot corpus
# (configs/generation.yaml); full fine-tuning at 1e-4, the best of 2e-5 / 5e-5 / 1e-4 on that
# corpus by test chrF (0.1754-0.1807 against 0.1643-0.1687 at 5e-5; docs/benchmarks.md,
# "Generation: training").
AUTO_METHOD = "lora"
AUTO_LEARNING_RATE = {"lora": 5e-4, "full": 1e-4}


def resolve(cfg: TrainingSettings) -> TrainingSettings:
    """`cfg` with its `auto` method and learning rate made concrete."""
    method = AUTO_METHOD if cfg.method == "auto" else cfg.method
    lr = AUTO_LEARNING_RATE[method] if cfg.learning_rate == "auto" else cfg.learning_rate
    return cfg.model_copy(update={"method": method, "learning_rate": lr})


@dataclass
class SFTResult:
    model: object            # a PeftModel (LoRA) or the plain model (full); save_bundle merges
    tokenizer: object
    base_dir: str            # the loadable base directory (a converted GGUF lands in the cache)
    steps: int
    samples_seen: int
    train_seconds: float
    final_loss: float

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def quiet_progress(trainer, desc: str, enabled: bool) -> None:
    """One progress bar with the loss in its postfix, like the classifier's fine-tune, instead of
    the HF Trainer's console output: its ProgressCallback prints every log dict under the bar
    (`{'loss': '3.075', 'grad_norm': ..., 'entropy': ...}` per step, then a `train_runtime`
    summary), which buried the pipeline's own lines in `make demo TASK=generation`."""
    from transformers import TrainerCallback

    from labelloop.progress import step_bar
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if not enabled:
        return

    class _Bar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = step_bar(state.max_steps, desc)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.add_callback(_Bar())


def tokenize_rows(rows: pd.DataFrame, tokenizer, settings: Settings) -> dict[str, list]:
    g = settings.generation
    ids, labels = [], []
    for prompt, response in zip(rows["prompt"], rows["response"]):
        x, y = chat.example_ids(tokenizer, chat.messages_for(prompt, g.system_prompt), response,
                                g.max_prompt_tokens, settings.model.max_length)
        if any(t != -100 for t in y):  # a prompt filling max_length leaves nothing to learn
            ids.append(x)
            labels.append(y)
    return {"input_ids": ids, "labels": labels}


def fine_tune(train: pd.DataFrame, settings: Settings, on_log: Optional[LogFn] = None,
              progress: bool = True, init_dir: Optional[str] = None) -> SFTResult:
    """Fine-tune `settings.model.base` (init pretrained or scratch) on prompt/response rows, or,
    with `init_dir` (a generation bundle: the champion), continue from those weights."""
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if train.empty:
        raise ValueError("no training rows")
    cfg = resolve(settings.training)
    device = modeling.pick_device(cfg.device)
    base_dir = base.resolve_causal_base(settings.model.base, base.cache_root(settings))
    tokenizer = base.load_tokenizer(base_dir)
    if init_dir is not None:  # a warm start: the champion's merged weights, fp32 masters
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=__import__("torch").float32)
    else:
        model = base.load_for_training(base_dir, settings.model, tokenizer, cfg.seed)
    tokenized = tokenize_rows(train, tokenizer, settings)
    if not tokenized["input_ids"]:
        raise ValueError("no training rows left a response token within model.max_length")
    datasets.disable_progress_bars()  # TRL's "Truncating train dataset" bars on rows we cut already
    dataset = datasets.Dataset.from_dict(tokenized)
    n = len(dataset)
    total_steps = cfg.max_steps or max(1, math.ceil(math.ceil(n / cfg.batch_size) * cfg.epochs))

    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType

        peft_config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora.r,
                                 lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules)
    losses: list[float] = []

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if on_log is not None:
                    on_log(state.global_step, {"train_loss": float(logs["loss"]),
                                               "learning_rate": float(logs.get("learning_rate", 0.0))})

    use_bf16 = device.type == "cuda" and __import__("torch").cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="labelloop-sft-") as out_dir:
        args = SFTConfig(
            output_dir=out_dir, per_device_train_batch_size=cfg.batch_size,
            num_train_epochs=cfg.epochs, max_steps=total_steps, learning_rate=cfg.learning_rate,
            warmup_steps=int(cfg.warmup_ratio * total_steps), weight_decay=cfg.weight_decay,
            lr_scheduler_type="linear", logging_steps=cfg.log_every_steps, save_strategy="no",
            report_to="none", bf16=use_bf16, use_cpu=device.type == "cpu", seed=cfg.seed,
            data_seed=cfg.seed, max_length=settings.model.max_length, packing=False,
            disable_tqdm=not progress, dataloader_num_workers=0,
            max_grad_norm=1.0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[_Log()])
        quiet_progress(trainer, f"fine-tune ({'warm ' if init_dir else ''}SFT, {cfg.method}, "
                                f"{device.type})", progress)
        start = time.perf_counter()
        state = trainer.train()
        elapsed = time.perf_counter() - start
    trained = trainer.model.eval()
    final = losses[-1] if losses else float(state.training_loss)
    return SFTResult(model=trained, tokenizer=tokenizer, base_dir=base_dir, steps=state.global_step,
                     samples_seen=min(state.global_step * cfg.batch_size, math.ceil(n * cfg.epochs)),
                     train_seconds=elapsed, final_loss=final)
