"""Token-level loss and perplexity of reference responses as a local `evaluate` module.

Each example brings the summed negative log-likelihood of its reference response tokens (the
model's loss before averaging) and how many tokens that was; the result averages per token over
the whole set, so long and short responses weigh by their length, as training's loss does.
"""

import math

import datasets
import evaluate


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean per-token negative log-likelihood (loss) and exp(loss).",
            citation="",
            inputs_description="nll: summed NLL per example (nats); tokens: its token count",
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll, tokens):
        total = int(sum(tokens))
        loss = float(sum(nll) / total) if total else float("nan")
        return {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0))) if total else float("nan")}
