"""Task definitions: what a model predicts and how human answers become training rows.

A task owns everything that differs between task families, so pipelines, the service and the
annotation tools stay generic: the label set, turning model output into predictions, and turning
an annotation back into a training row, and which metrics may decide promotion. Two families:
`ClassificationTask` (text -> one label of a fixed set) and `GenerationTask` (prompt ->
response text), both registered in `TASK_TYPES`; a bundle's `labelloop.json` holds the task's
`to_dict()` and `task_from_dict` rebuilds it.

Rows by family: classification `{text, label}`; generation `{prompt, response}` (later, for
preferences, `{prompt, chosen, rejected}`). What a model gives back: `Prediction` (a label, its
score and the class probabilities) or `Generation` (a text, why it stopped, token counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from labelloop.settings import PROMOTION_METRICS, Settings


class LabelError(ValueError):
    """A label that the task does not know."""


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities}


@dataclass(frozen=True)
class ClassificationTask:
    """Single-label text classification over a fixed, ordered label set."""

    name: str
    labels: tuple[str, ...]
    type: str = field(default="classification", init=False)
    # (label, what annotators see) pairs, from task.display_names; the label is what is stored
    display_names: tuple[tuple[str, str], ...] = ()

    def display_name(self, label: str) -> str:
        return dict(self.display_names).get(label, label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def encode_label(self, label: Any) -> int:
        try:
            return self.label2id[str(label)]
        except KeyError:
            raise LabelError(
                f"label {label!r} is not in the task's label set {list(self.labels)}"
            ) from None

    def predictions_from_logits(self, logits: np.ndarray) -> list[Prediction]:
        """Softmax each row; the top class is the label, its probability the score."""
        logits = np.asarray(logits, dtype=np.float64)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=-1, keepdims=True)
        top = probs.argmax(axis=-1)
        return [
            Prediction(
                label=self.labels[int(t)],
                score=float(p[t]),
                probabilities={lab: float(v) for lab, v in zip(self.labels, p)},
            )
            for t, p in zip(top, probs)
        ]

    def row_from_answer(self, text: str, answer: Any) -> dict[str, str]:
        """An annotator's answer (a choice, or a one-element list of choices) as a training row."""
        if isinstance(answer, (list, tuple)):
            if len(answer) != 1:
                raise LabelError(f"expected exactly one choice, got {list(answer)!r}")
            answer = answer[0]
        if not isinstance(text, str) or not text.strip():
            raise LabelError("the annotated text is empty")
        self.encode_label(answer)
        return {"text": text, "label": str(answer)}

    @property
    def promotion_metrics(self) -> tuple[str, ...]:
        return PROMOTION_METRICS[self.type]

    @property
    def row_columns(self) -> tuple[str, ...]:
        return ("text", "label")

    @property
    def training_kind(self) -> str:
        """The labels-store rows (`kind`) this family trains on."""
        return "label"

    def to_dict(self) -> dict[str, Any]:
        out = {"type": self.type, "name": self.name, "labels": list(self.labels)}
        if self.display_names:
            out["display_names"] = dict(self.display_names)
        return out


@dataclass(frozen=True)
class Generation:
    """One generated response: the text, why decoding stopped and what it cost in tokens."""

    text: str
    finish_reason: str = "stop"  # stop (end of turn or a stop string) | length (max_new_tokens)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True)
class GenerationTask:
    """Prompt -> response with a causal LM and its chat template (labelloop.generation)."""

    name: str
    type: str = field(default="generation", init=False)

    @property
    def promotion_metrics(self) -> tuple[str, ...]:
        return PROMOTION_METRICS[self.type]

    @property
    def row_columns(self) -> tuple[str, ...]:
        return ("prompt", "response")

    @property
    def training_kind(self) -> str:
        """The labels-store rows (`kind`) this family trains on: edited responses (preferences
        are pairs: `labels_store.preference_rows`)."""
        return "response"

    def messages(self, prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
        """The chat a prompt becomes (the model's chat template renders it): one definition,
        labelloop.generation.chat.messages_for (a prompt may hold earlier turns)."""
        from labelloop.generation.chat import messages_for

        return messages_for(prompt, system_prompt)

    def row_from_answer(self, prompt: str, answer: Any) -> dict[str, str]:
        """An annotator's response (a text, or a one-element list of texts) as a training row."""
        if isinstance(answer, (list, tuple)):
            if len(answer) != 1:
                raise LabelError(f"expected exactly one response text, got {len(answer)}")
            answer = answer[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise LabelError("the annotated prompt is empty")
        if not isinstance(answer, str) or not answer.strip():
            raise LabelError("the response is empty")
        return {"prompt": prompt, "response": answer.strip()}

    def preference_from_answer(self, prompt: str, response_a: Any, response_b: Any,
                               choice: Any) -> dict[str, str]:
        """An annotator's comparison of two responses as {prompt, chosen, rejected, choice}
        (choice a | b | tie | both_bad; for a tie or both bad `chosen` is A, `rejected` B)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise LabelError("the compared prompt is empty")
        for name, text in (("A", response_a), ("B", response_b)):
            if not isinstance(text, str) or not text.strip():
                raise LabelError(f"response {name} is empty")
        if choice not in PREFERENCE_CHOICES:
            raise LabelError(f"no choice made (expected one of {list(PREFERENCE_CHOICES)}, "
                             f"got {choice!r})")
        if response_a.strip() == response_b.strip():
            raise LabelError("the two responses are identical: nothing to prefer")
        a, b = response_a.strip(), response_b.strip()
        chosen, rejected = (b, a) if choice == "b" else (a, b)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "choice": choice}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}


# A comparison's answer: response A or B is better, both are as good, or both are bad.
PREFERENCE_CHOICES = ("a", "b", "tie", "both_bad")
# An edit answer's optional rating of the response shown: a whole number 1..MAX_RATING.
MAX_RATING = 5

Task = ClassificationTask | GenerationTask
TASK_TYPES = {"classification": ClassificationTask, "generation": GenerationTask}


def task_from_settings(settings: Settings) -> Task:
    return task_from_dict(settings.task.model_dump())


def task_from_dict(data: dict[str, Any]) -> Task:
    """Rebuild a task from `to_dict()` output (stored beside every registered model)."""
    kind = data.get("type", "classification")
    if kind not in TASK_TYPES:
        raise ValueError(f"unknown task type {kind!r}; known: {sorted(TASK_TYPES)}")
    if kind == "generation":
        return GenerationTask(name=data.get("name", kind))
    labels: Sequence[str] = data["labels"]
    names = data.get("display_names") or {}
    return TASK_TYPES[kind](name=data.get("name", kind), labels=tuple(labels),
                            display_names=tuple((lab, names[lab]) for lab in labels
                                                if lab in names and names[lab] != lab))
