"""Evaluation of a generation model on the frozen test split, against its base in the same run.

For each model: loss and perplexity of the reference responses (teacher forcing, the same
tokens training scores), and greedy outputs of at most `generation.max_new_tokens` tokens
scored against the references with chrF and ROUGE-L, all through the project's local
`evaluate` modules (labelloop/metrics). The base model gets the same numbers, so every version
records `gain_<metric>` over its base; a table of sample prompts with the base's output, the
fine-tuned output and the reference goes to MLflow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from labelloop.generation import chat
from labelloop.settings import Settings
from labelloop.tasks import Generation

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"
SCORES = ("chrf", "rouge_l", "loss", "perplexity")


@functools.lru_cache(maxsize=1)
def _modules():
    import evaluate

    return {name: evaluate.load(str(METRICS_DIR / f"{name}.py"))
            for name in ("chrf", "rouge_l", "perplexity")}


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    m = _modules()
    out = {}
    out.update(m["chrf"].compute(predictions=list(predictions), references=list(references)))
    out.update(m["rouge_l"].compute(predictions=list(predictions), references=list(references)))
    return out


def _batches(order: np.ndarray, size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence, settings: Settings,
             max_new_tokens: int | None = None,
             sample_seed: int | None = None) -> list[Generation]:
    """Greedy outputs for prompts (texts or chat messages), batched with left padding, in order.
    `sample_seed`: sampled outputs instead (temperature 1, top-p 0.95, seeded): a second
    response to compare with the greedy one."""
    g = settings.generation
    max_new = max_new_tokens or g.max_new_tokens
    device = next(model.parameters()).device
    ids = [chat.prompt_ids(tokenizer, chat.messages_for(p, g.system_prompt), g.max_prompt_tokens)
           for p in prompts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    out: list[Generation | None] = [None] * len(ids)
    for idx in _batches(order, g.eval_batch_size):
        width = max(len(ids[i]) for i in idx)
        batch = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            batch[row, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        sampling = {"do_sample": False}
        if sample_seed is not None:
            torch.manual_seed(sample_seed)
            sampling = {"do_sample": True, "temperature": 1.0, "top_p": 0.95}
        gen = model.generate(input_ids=batch.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad,
                             **sampling)
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            stopped = eos in new
            if stopped:
                new = new[:new.index(eos)]
            out[i] = Generation(text=tokenizer.decode(new, skip_special_tokens=True).strip(),
                                finish_reason="stop" if stopped else "length",
                                prompt_tokens=len(ids[i]), completion_tokens=len(new))
    return out  # type: ignore[return-value]


@torch.inference_mode()
def response_nll(model, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                 settings: Settings) -> tuple[list[float], list[int]]:
    """Summed NLL of each reference response's tokens and their count (training's tokens)."""
    g = settings.generation
    device = next(model.parameters()).device
    examples = [chat.example_ids(tokenizer, chat.messages_for(p, g.system_prompt), r,
                                 g.max_prompt_tokens, settings.model.max_length)
                for p, r in zip(prompts, responses)]
    order = np.argsort([len(x) for x, _ in examples], kind="stable")
    nll, count = [0.0] * len(examples), [0] * len(examples)
    for idx in _batches(order, g.eval_batch_size):
        width = max(len(examples[i][0]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            x, y = examples[i]
            ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = (
                torch.tensor(x), torch.tensor(y), 1)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = labels[:, 1:].to(device)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), target, ignore_index=-100, reduction="none")
        for row, i in enumerate(idx):
            nll[i] = float(losses[row].sum())
            count[i] = int((target[row] != -100).sum())
    return nll, count


@dataclass
class GenEvalResult:
    metrics: dict[str, float]      # test_* of the model, base_* of its base, gain_*
    outputs: list[str]             # the model's greedy outputs, in test order
    base_outputs: list[str]
    table: pd.DataFrame            # prompt, reference, base_output, output (+ scores)

    def summary(self) -> str:
        m = self.metrics
        lines = [f"{'':<12}{'fine-tuned':>12}{'base':>12}{'gain':>10}"]
        for name in SCORES:
            lines.append(f"{name:<12}{m[f'test_{name}']:>12.4f}{m[f'base_{name}']:>12.4f}"
                         f"{m[f'test_{name}'] - m[f'base_{name}']:>+10.4f}")
        return "\n".join(lines) + f"\n(n={len(self.outputs)} test prompts, greedy, " \
                                  f"max {m['max_new_tokens']:.0f} new tokens)"


def score_model(model, tokenizer, test: pd.DataFrame, settings: Settings) -> tuple[dict, list[str]]:
    prompts, refs = list(test["prompt"]), list(test["response"])
    gens = generate(model, tokenizer, prompts, settings)
    outputs = [x.text for x in gens]
    nll, count = response_nll(model, tokenizer, prompts, refs, settings)
    scores = text_scores(outputs, refs)
    scores.update(_modules()["perplexity"].compute(nll=nll, tokens=count))
    scores["mean_output_tokens"] = float(np.mean([x.completion_tokens for x in gens])) if gens else 0.0
    return scores, outputs


def evaluate_with_base(model, tokenizer, base_model, base_tokenizer, test: pd.DataFrame,
                       settings: Settings) -> GenEvalResult:
    """Score the fine-tuned model and its base on the same test rows, the same way."""
    mine, outputs = score_model(model, tokenizer, test, settings)
    theirs, base_outputs = score_model(base_model, base_tokenizer, test, settings)
    metrics = {f"test_{k}": float(v) for k, v in mine.items()}
    metrics.update({f"base_{k}": float(v) for k, v in theirs.items()})
    metrics.update({f"gain_{k}": float(mine[k] - theirs[k]) for k in ("chrf", "rouge_l")})
    metrics["max_new_tokens"] = float(settings.generation.max_new_tokens)
    table = pd.DataFrame({"prompt": list(test["prompt"]), "reference": list(test["response"]),
                          "base_output": base_outputs, "output": outputs})
    return GenEvalResult(metrics=metrics, outputs=outputs, base_outputs=base_outputs, table=table)


def log_to_mlflow(result: GenEvalResult, sample_rows: int) -> None:
    import mlflow

    mlflow.log_metrics(result.metrics)
    if sample_rows:
        sample = result.table.sample(n=min(sample_rows, len(result.table)), random_state=0)
        mlflow.log_table(sample.reset_index(drop=True), "evaluation/test_samples.json")
