"""Task-adaptive pretraining: more masked-language-model training of the base encoder on the
task's own texts before its classifier is fine-tuned (Gururangan et al., 2020, "Don't Stop
Pretraining"). The texts need no labels, so the unlabelled pool counts as much as the labelled
rows: the encoder learns the words and spellings of these texts (tweets, reviews, tickets)
that its pretraining corpus had few of.

The result is a plain Hugging Face encoder directory, usable as `model.base`: the adapted
encoder weights, the base's own pooler (masked-LM training has none, and `pooling: cls` reads
it), its tokenizer, and its sentence-transformers files (so `pooling: auto` still finds mean).

Measured, it hurts the default base (docs/benchmarks.md, "Fifteenth session": -0.003 to -0.005
macro-F1 on the full corpus, -0.03 to -0.09 on 400 labelled rows): all-MiniLM-L6-v2 was tuned
so that the mean of its token states places texts by meaning, and masked-LM training gives that
up. So it is a benchmark tool (benchmarks/training.py `adapt_*` keys), not a setting.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModel, AutoModelForMaskedLM, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from labelloop import modeling
from labelloop.modeling import ModelError

# What a sentence-transformers model directory holds besides the encoder: copied so the
# adapted directory pools as its base did (modeling.resolve_pooling reads 1_Pooling).
SENTENCE_TRANSFORMERS_FILES = ("1_Pooling", "modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json")


@dataclass
class AdaptResult:
    path: Path
    texts: int
    steps: int
    seconds: float
    first_loss: float  # mean masked-LM loss of the first tenth of the steps
    final_loss: float  # ... and of the last tenth: below first_loss when the texts were learned


def mask_tokens(input_ids: torch.Tensor, attention: torch.Tensor, special: torch.Tensor,
                mask_id: int, vocab_size: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: `probability` of the real (not special, not padding) tokens are
    predicted; of those 80% become [MASK], 10% a random token, 10% stay. Returns the inputs and
    the labels (-100 where nothing is predicted)."""
    draw = torch.rand(input_ids.shape, generator=generator, device="cpu").to(input_ids.device)
    chosen = (draw < probability) & attention.bool() & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    how = torch.rand(input_ids.shape, generator=generator, device="cpu").to(input_ids.device)
    inputs = input_ids.clone()
    inputs[chosen & (how < 0.8)] = mask_id
    randomised = chosen & (how >= 0.8) & (how < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator,
                               device="cpu").to(input_ids.device)
    inputs[randomised] = random_ids[randomised]
    return inputs, labels


def adapt_base(base: str, texts: Sequence[str], out_dir: Path, *, epochs: float = 10,
               batch_size: int = 128, learning_rate: float = 1e-4, mask_probability: float = 0.15,
               max_length: int = 64, device: str = "auto", seed: int = 42,
               warmup_ratio: float = 0.06, head_only_fraction: float = 0.1) -> AdaptResult:
    """Masked-LM training of `base` on `texts` for `epochs` passes; the encoder is written to
    `out_dir` (see the module's docstring) and that path returned with the losses.

    A sentence encoder ships without its masked-LM head, so the head starts random; for the
    first `head_only_fraction` of the steps only the head trains (the encoder frozen), so the
    random head's first gradients do not pull the pretrained encoder off course."""
    texts = [t for t in dict.fromkeys(texts) if t]
    if not texts:
        raise ModelError("task-adaptive pretraining needs texts; none were given")
    name = modeling.resolve_base_model(base)
    tokenizer = modeling.load_tokenizer(name)
    if tokenizer.mask_token_id is None:
        raise ModelError(f"base model {base!r} has no mask token: masked-LM adaptation needs one")
    torch.manual_seed(seed)
    target = modeling.pick_device(device)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new masked-LM head's "newly initialized" notices
    try:
        mlm = AutoModelForMaskedLM.from_pretrained(name, dtype=torch.float32).to(target)
    finally:
        hf_logging.set_verbosity(verbosity)
    head = getattr(mlm, "cls", None) or getattr(mlm, "lm_head", None)
    if head is None:
        raise ModelError(f"base model {base!r}: no masked-LM head class known for "
                         f"{type(mlm).__name__} (BERT and RoBERTa kin are)")
    enc = modeling.tokenize_padded(tokenizer, texts, max_length, "head")
    input_ids, attention = enc["input_ids"].to(target), enc["attention_mask"].to(target)
    lengths = enc["attention_mask"].sum(dim=1)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in set(tokenizer.all_special_ids):
        special |= input_ids == token_id

    n = len(texts)
    steps = max(1, math.ceil(n / batch_size * epochs))
    optimizer = torch.optim.AdamW(list(mlm.parameters()),
                                  lr=learning_rate, weight_decay=0.01,
                                  fused=target.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    use_bf16 = target.type == "cuda" and torch.cuda.is_bf16_supported()
    generator = torch.Generator().manual_seed(seed)
    losses: list[torch.Tensor] = []
    head_steps = int(head_only_fraction * steps)
    encoder_params = list(mlm.base_model.parameters())
    mlm.train()
    start = time.perf_counter()
    step = 0
    while step < steps:
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            if step >= steps:
                break
            width = int(lengths[idx].max())
            rows = idx.to(target)
            ids, mask, spec = input_ids[rows, :width], attention[rows, :width], special[rows, :width]
            inputs, labels = mask_tokens(ids, mask, spec, tokenizer.mask_token_id,
                                         len(tokenizer), mask_probability, generator)
            if step in (0, head_steps):  # the encoder trains from head_steps on
                for p in encoder_params:
                    p.requires_grad_(step >= head_steps)
            chosen = labels != -100
            if not bool(chosen.any()):  # a batch of very short texts drew no token
                continue
            with torch.autocast(target.type, dtype=torch.bfloat16, enabled=use_bf16):
                states = mlm.base_model(input_ids=inputs, attention_mask=mask).last_hidden_state
                # the vocabulary-wide head on the predicted tokens only (15% of them): the
                # head is most of the step's work otherwise
                logits = head(states[chosen])
            loss = torch.nn.functional.cross_entropy(logits.float(), labels[chosen])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in mlm.parameters() if p.grad is not None],
                                           1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
    if target.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tenth = max(1, len(losses) // 10)
    first, last = (float(torch.stack(part).mean()) for part in (losses[:tenth], losses[-tenth:]))

    # The base's own encoder (pooler included) with the adapted weights loaded over it.
    encoder = AutoModel.from_pretrained(name, dtype=torch.float32)
    missing, unexpected = encoder.load_state_dict(mlm.base_model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise ModelError(f"adapted weights do not fit the base encoder: missing {missing}, "
                         f"unexpected {unexpected}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for item in SENTENCE_TRANSFORMERS_FILES:
        source = Path(name) / item
        if source.is_dir():
            shutil.copytree(source, out_dir / item, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, out_dir / item)
    return AdaptResult(path=out_dir, texts=n, steps=steps, seconds=seconds,
                       first_loss=first, final_loss=last)
