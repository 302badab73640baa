"""Macro and per-class precision, recall and F1 as a local `evaluate` module.

`num_labels` fixes the class set, so a class missing from a small batch still counts (as 0)
in the macro average instead of silently disappearing from it.
"""

import datasets
import evaluate
from sklearn.metrics import precision_recall_fscore_support


class PrecisionRecallF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Macro-averaged and per-class precision, recall and F1.",
            citation="",
            inputs_description="predictions, references: integer class ids; num_labels: int",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=None):
        labels = list(range(num_labels)) if num_labels else sorted(set(references) | set(predictions))
        p, r, f, support = precision_recall_fscore_support(
            references, predictions, labels=labels, zero_division=0
        )
        return {
            "macro_precision": float(p.mean()),
            "macro_recall": float(r.mean()),
            "macro_f1": float(f.mean()),
            "per_class_precision": [float(x) for x in p],
            "per_class_recall": [float(x) for x in r],
            "per_class_f1": [float(x) for x in f],
            "per_class_support": [int(x) for x in support],
        }
