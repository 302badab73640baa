"""Prompts and training examples through the model's chat template.

Training, evaluation and serving all build token ids here, so the model sees at inference
exactly the context it was trained on. A tokenizer without a chat template gets
`DEFAULT_CHAT_TEMPLATE` (saved with the bundle's tokenizer, so serving uses it too).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

Messages = list[dict[str, str]]

# A prompt with earlier turns (a chat's later answer) travels as one string, like any prompt,
# through splits, digests, the labels store and the annotation tools: its messages as compact
# JSON, which starts so. `messages_for` reads it back; a plain prompt is one user message.
CONVERSATION_START = '[{"role":'

# A plain ChatML-like template for tokenizers that bring none (e.g. a raw GPT-2 tokenizer);
# each turn ends with the tokenizer's eos token, so generation stops at the end of the answer.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> bool:
    """Give the tokenizer a chat template and a pad token if it lacks them; True if it had one."""
    had = bool(getattr(tokenizer, "chat_template", None))
    if not had:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return had


def conversation_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The prompt string of the chat up to an answer: the user's text when that is all there
    is, else the messages as compact JSON (CONVERSATION_START)."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages],
                      ensure_ascii=False, separators=(",", ":"))


def conversation(prompt: str) -> Optional[Messages]:
    """The messages of a `conversation_prompt` string, or None for a plain prompt."""
    if not prompt.startswith(CONVERSATION_START):
        return None
    try:
        value = json.loads(prompt)
    except ValueError:
        return None
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value)
    return [{"role": m["role"], "content": m["content"]} for m in value] if ok else None


# How annotators read a conversation prompt: one "Role: text" paragraph a turn.
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def transcript(messages: Sequence[dict[str, str]]) -> str:
    return "\n\n".join(f"{ROLE_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}"
                       for m in messages)


def shown_prompt(prompt: str) -> tuple[str, Optional[str]]:
    """(what annotators read, the exact prompt to keep beside it): a conversation prompt reads as
    its turns (`transcript`) and is kept as it is, since the transcript cannot be read back
    exactly; a plain prompt is shown as it is, with nothing kept beside it (None)."""
    messages = conversation(prompt)
    return (prompt, None) if messages is None else (transcript(messages), prompt)


def prompt_from(shown: Any, kept: Any) -> Optional[str]:
    """The exact prompt of an annotation tool's item, back from `shown_prompt`'s two values
    (items made without the kept value, e.g. imported by hand, are what they show)."""
    if isinstance(kept, str) and conversation(kept) is not None:
        return kept
    return shown if isinstance(shown, str) else None


def messages_for(prompt: str | Sequence[dict[str, str]], system_prompt: str | None = None) -> Messages:
    """A prompt (text, a `conversation_prompt` string, or chat messages ending with a user turn)
    as chat messages."""
    if isinstance(prompt, str):
        msgs = conversation(prompt) or [{"role": "user", "content": prompt}]
    else:
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    if system_prompt and not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def _ids(tokenizer, messages: Messages, add_generation_prompt: bool) -> list[int]:
    out: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             tokenize=True, return_dict=False)
    return list(out)


def fit_prompt(tokenizer, messages: Messages, max_prompt_tokens: int) -> tuple[Messages, list[int]]:
    """(messages, ids): the chat up to the assistant's turn in at most `max_prompt_tokens` ids.

    A prompt that is too long loses its oldest turns first (a system message stays), then the
    beginning of its last message (not the template's structure around it), so the model still
    sees a well-formed chat ending with the question.
    """
    ids = _ids(tokenizer, messages, True)
    while len(ids) > max_prompt_tokens:
        first = 1 if messages[0]["role"] == "system" else 0
        if len(messages) - first < 2:
            break
        messages = messages[:first] + messages[first + 1:]
        ids = _ids(tokenizer, messages, True)
    for _ in range(4):
        excess = len(ids) - max_prompt_tokens
        if excess <= 0:
            return messages, ids
        last = messages[-1]
        content = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
        if excess >= len(content):
            break
        messages = messages[:-1] + [{"role": last["role"],
                                     "content": tokenizer.decode(content[excess:])}]
        ids = _ids(tokenizer, messages, True)
    return messages, ids[-max_prompt_tokens:]  # the template alone is too long: keep the end


def prompt_ids(tokenizer, messages: Messages, max_prompt_tokens: int) -> list[int]:
    return fit_prompt(tokenizer, messages, max_prompt_tokens)[1]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def example_ids(tokenizer, messages: Messages, response: str, max_prompt_tokens: int,
                max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training example: labels are -100 on the prompt, so the loss
    is on the response only (its end-of-turn token included); cut to `max_length` tokens."""
    messages, prompt = fit_prompt(tokenizer, messages, max_prompt_tokens)
    full = _ids(tokenizer, messages + [{"role": "assistant", "content": response}], False)
    start = common_prefix(prompt, full)
    if start < len(prompt) or start >= len(full):
        # The template renders the prompt alone differently: use prompt ids + answer ids.
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        full, start = prompt + answer, len(prompt)
    input_ids = full[:max_length]
    labels = ([-100] * start + full[start:])[:max_length]
    return input_ids, labels
