"""ROUGE-L F-measure (rouge-score, longest common subsequence) as a local `evaluate` module.

The mean over examples of each example's ROUGE-L F1 (Porter stemming, as in the ROUGE paper's
common setting); `scores` returns the per-example values for a paired bootstrap.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean ROUGE-L F1 over examples (rouge-score, stemmed).",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004",
            inputs_description="predictions, references: one string each per example",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, scores=False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        values = [scorer.score(ref, pred)["rougeL"].fmeasure
                  for pred, ref in zip(predictions, references)]
        out = {"rouge_l": float(sum(values) / len(values)) if values else 0.0}
        if scores:
            out["scores"] = [float(v) for v in values]
        return out
