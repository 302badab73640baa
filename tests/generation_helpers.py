"""A tiny generation bundle for tests: a few-layer random Llama (SmolLM2's architecture) and a
small byte-level BPE tokenizer with a ChatML template, saved like a real generation bundle
(Hugging Face causal-LM directory + labelloop.json with task type generation). Seconds to
build; random weights, so outputs are junk but deterministic per seed and versions differ."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["Hello, how are you? I am fine, thank you.", "What is the weather like today?",
          "The quick brown fox jumps over the lazy dog.", "Tell me a joke about computers.",
          "Machine learning models need data.", "user assistant system"] * 20


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_generation_bundle(out_dir: Path, seed: int = 0, layers: int = 2, hidden: int = 64,
                           max_positions: int = 2048) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    meta = {"task": {"type": "generation", "name": "chat"}, "base_model": "tiny-random-llama",
            "dataset_digest": f"untrained-seed-{seed}", "method": "none", "version": None}
    (out_dir / "labelloop.json").write_text(json.dumps(meta, indent=2))
    return out_dir
