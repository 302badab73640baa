"""Evaluation: metrics through the project's local `evaluate` modules, plus the pictures and
tables a person looks at (confusion matrix, per-class report, sample predictions, worst errors).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from labelloop.modeling import Classifier
from labelloop.tasks import ClassificationTask

METRICS_DIR = Path(__file__).parent / "metrics"


@functools.lru_cache(maxsize=1)
def _metric_modules():
    import evaluate

    return (
        evaluate.load(str(METRICS_DIR / "accuracy.py")),
        evaluate.load(str(METRICS_DIR / "precision_recall_f1.py")),
    )


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat scalars, ready for mlflow.log_metrics
    per_class: pd.DataFrame
    confusion: np.ndarray
    predictions: pd.DataFrame  # text, label, predicted, score, correct, true_label_prob
    labels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"accuracy {self.metrics['accuracy']:.4f}  macro-F1 {self.metrics['macro_f1']:.4f}"
                 f"  (n={len(self.predictions)})"]
        lines.append(self.per_class.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return "\n".join(lines)


def compute_metrics(references: list[int], predictions: list[int], task: ClassificationTask) -> dict[str, Any]:
    accuracy, prf = _metric_modules()
    out: dict[str, Any] = {}
    out.update(accuracy.compute(predictions=predictions, references=references))
    out.update(prf.compute(predictions=predictions, references=references,
                           num_labels=len(task.labels)))
    return out


def evaluate_classifier(classifier: Classifier, test: pd.DataFrame, batch_size: int = 256) -> EvalResult:
    task = classifier.task
    texts = list(test["text"])
    preds = classifier.predict(texts, batch_size=batch_size)
    refs = [task.encode_label(label) for label in test["label"]]
    pred_ids = [task.encode_label(p.label) for p in preds]
    raw = compute_metrics(refs, pred_ids, task)

    per_class = pd.DataFrame({
        "label": list(task.labels),
        "precision": raw["per_class_precision"],
        "recall": raw["per_class_recall"],
        "f1": raw["per_class_f1"],
        "support": raw["per_class_support"],
    })
    metrics = {k: float(raw[k]) for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall")}
    for row in per_class.itertuples():
        metrics[f"f1_{row.label}"] = float(row.f1)
        metrics[f"precision_{row.label}"] = float(row.precision)
        metrics[f"recall_{row.label}"] = float(row.recall)

    table = pd.DataFrame({
        "text": texts,
        "label": list(test["label"]),
        "predicted": [p.label for p in preds],
        "score": [p.score for p in preds],
        "true_label_prob": [p.probabilities[lab] for p, lab in zip(preds, test["label"])],
    })
    table["correct"] = table["label"] == table["predicted"]
    cm = confusion_matrix(refs, pred_ids, labels=list(range(len(task.labels))))
    return EvalResult(metrics=metrics, per_class=per_class, confusion=cm, predictions=table,
                      labels=list(task.labels))


def worst_errors(result: EvalResult, n: int) -> pd.DataFrame:
    """Wrong predictions the model was most sure of (lowest probability on the true label)."""
    wrong = result.predictions[~result.predictions["correct"]]
    return wrong.sort_values("true_label_prob").head(n).reset_index(drop=True)


def confusion_figure(result: EvalResult, title: str = "Confusion matrix"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    cm = result.confusion
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(result.labels)), result.labels, rotation=30)
    ax.set_yticks(range(len(result.labels)), result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def log_to_mlflow(result: EvalResult, sample_predictions: int, prefix: str = "test_") -> None:
    """Metrics, confusion picture, per-class report, samples and worst errors to the active run."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_metrics({f"{prefix}{k}": v for k, v in result.metrics.items()})
    fig = confusion_figure(result)
    mlflow.log_figure(fig, f"evaluation/{prefix}confusion_matrix.png")
    plt.close(fig)
    mlflow.log_table(result.per_class, f"evaluation/{prefix}per_class.json")
    if sample_predictions:
        samples = result.predictions.sample(
            n=min(sample_predictions, len(result.predictions)), random_state=0
        )
        mlflow.log_table(samples.reset_index(drop=True), f"evaluation/{prefix}sample_predictions.json")
        mlflow.log_table(worst_errors(result, sample_predictions),
                         f"evaluation/{prefix}worst_errors.json")
