"""chrF (character n-gram F-score, sacrebleu) as a local `evaluate` module, on a 0-1 scale.

Corpus-level: n-gram statistics are summed over all sentences before the F-score (sacrebleu's
definition). `statistics` returns those per-sentence counts too, so a paired bootstrap can
re-score any resample exactly by summing rows (labelloop.generation.promotion).
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF


class ChrF(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus chrF (sacrebleu defaults: char order 6, beta 2), divided by 100.",
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, 2015",
            inputs_description="predictions, references: one string each per example",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, statistics=False):
        chrf = CHRF()
        stats = chrf._extract_corpus_statistics(list(predictions), [list(references)])
        if not stats:
            score = 0.0
        else:
            total = [sum(column) for column in zip(*stats)]
            score = chrf._compute_score_from_stats(total).score / 100.0
        out = {"chrf": float(score)}
        if statistics:
            out["statistics"] = [list(map(int, row)) for row in stats]
        return out
