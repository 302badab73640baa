"""Task definitions: what a model predicts and how human answers become training rows.

A task owns everything that differs between task families, so pipelines, the service and the
annotation tools stay generic: the label set, turning model output into predictions, and turning
an annotation back into a training row. Text generation will be a second dataclass beside
`ClassificationTask` with the same methods, registered in `TASK_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from labelloop.settings import Settings


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

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "labels": list(self.labels)}


TASK_TYPES = {"classification": ClassificationTask}


def task_from_settings(settings: Settings) -> ClassificationTask:
    return task_from_dict(settings.task.model_dump())


def task_from_dict(data: dict[str, Any]) -> ClassificationTask:
    """Rebuild a task from `to_dict()` output (stored beside every registered model)."""
    kind = data.get("type", "classification")
    if kind not in TASK_TYPES:
        raise ValueError(f"unknown task type {kind!r}; known: {sorted(TASK_TYPES)}")
    labels: Sequence[str] = data["labels"]
    return TASK_TYPES[kind](name=data.get("name", kind), labels=tuple(labels))
