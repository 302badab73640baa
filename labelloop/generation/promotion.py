"""Champion/challenger for generation models, on the same frozen test split.

Scores are chrF or ROUGE-L (`promotion.metric`) of each version's greedy outputs against the
references. Rule `margin`: the challenger must beat the champion by `promotion.margin`. Rule
`paired`: a paired bootstrap over the same test rows (both versions' outputs on one resample
each time) says whether the difference is beyond chance; chrF is re-scored exactly per
resample from summed n-gram statistics (corpus chrF), ROUGE-L as a mean of per-row scores.
A training run has no human judgements to break a tie within noise (issue 14 adds those), so
there the champion stays. A version's outputs are cached per test digest (labelloop.challenger's
cache folder), so the champion is not re-run while the test split stays the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from labelloop import promotion
from labelloop.generation import data
from labelloop.generation import evaluation
from labelloop.settings import Settings


def _cache_path(settings: Settings, version: str, test_digest: str) -> Path:
    return (settings.data_path / "cache" / "test-outputs"
            / f"{settings.registry.model_name}-v{version}-{test_digest}.json")


def store_outputs(settings: Settings, version: str, test: pd.DataFrame, outputs: list[str]) -> Path:
    digest = data.digest(test)
    path = _cache_path(settings, version, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"test_digest": digest, "outputs": list(outputs)}))
    tmp.replace(path)
    return path


def cached_outputs(settings: Settings, version: str, test: pd.DataFrame) -> Optional[list[str]]:
    """Version `version`'s stored outputs on these test rows, or None."""
    digest = data.digest(test)
    path = _cache_path(settings, version, digest)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("test_digest") == digest and len(cached["outputs"]) == len(test):
                return list(cached["outputs"])
        except (ValueError, KeyError):
            pass
    return None


def outputs_of(settings: Settings, version: str, test: pd.DataFrame) -> list[str]:
    """Version `version`'s greedy outputs on the test rows (cached; generated when missing)."""
    cached = cached_outputs(settings, version, test)
    if cached is not None:
        return cached
    from labelloop import registry
    from labelloop.generation.bundle import load_generation_bundle

    g = load_generation_bundle(registry.fetch_bundle(settings, version),
                               device=settings.training.device)
    outputs = [x.text for x in evaluation.generate(g.model, g.tokenizer, list(test["prompt"]), settings)]
    store_outputs(settings, version, test, outputs)
    return outputs


def per_row_stats(metric: str, outputs: list[str], refs: list[str]) -> np.ndarray:
    """Rows that sum (chrf: n-gram counts) or average (rouge_l: scores) to the metric."""
    m = evaluation._modules()
    if metric == "chrf":
        return np.asarray(m["chrf"].compute(predictions=outputs, references=refs,
                                            statistics=True)["statistics"], dtype=np.float64)
    if metric == "rouge_l":
        return np.asarray(m["rouge_l"].compute(predictions=outputs, references=refs,
                                               scores=True)["scores"], dtype=np.float64)[:, None]
    raise ValueError(f"not a generation metric: {metric!r}")


def score_from_stats(metric: str, stats: np.ndarray) -> float:
    if metric == "chrf":
        from sacrebleu.metrics import CHRF

        return CHRF()._compute_score_from_stats(list(stats.sum(axis=0))).score / 100.0
    return float(stats[:, 0].mean()) if len(stats) else 0.0


def paired_bootstrap(metric: str, champion: np.ndarray, challenger: np.ndarray, resamples: int,
                     confidence: float, seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high) of challenger - champion over resamples of the same rows."""
    if len(champion) != len(challenger) or len(champion) == 0:
        raise ValueError("paired bootstrap needs the same, non-empty rows for both versions")
    diff = score_from_stats(metric, challenger) - score_from_stats(metric, champion)
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    for k in range(resamples):
        idx = rng.integers(0, len(champion), size=len(champion))
        deltas[k] = score_from_stats(metric, challenger[idx]) - score_from_stats(metric, champion[idx])
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(diff), float(low), float(high)


def best_promoted(settings: Settings, test: pd.DataFrame,
                  challenger_version: str) -> Optional[tuple[str, float]]:
    """(version, score) of the best version promoted earlier on this test split (those with
    outputs stored for it; no old model is loaded)."""
    from labelloop import registry

    metric, refs = settings.promotion.metric, list(test["response"])

    def score_of(version: str) -> Optional[float]:
        outputs = cached_outputs(settings, version, test)
        return None if outputs is None else score_from_stats(metric,
                                                             per_row_stats(metric, outputs, refs))

    return registry.best_promoted(settings, score_of, exclude=challenger_version)


def judge(settings: Settings, challenger_version: str, challenger_outputs: list[str],
          test: pd.DataFrame, champion_version: Optional[str]) -> promotion.PromotionDecision:
    p = settings.promotion
    refs = list(test["response"])
    chal = per_row_stats(p.metric, list(challenger_outputs), refs)
    chal_score = score_from_stats(p.metric, chal)
    if champion_version is None or str(champion_version) == str(challenger_version):
        return promotion.decide(p.metric, challenger_version, chal_score,
                                None if champion_version is None else str(champion_version),
                                None, p.margin)
    champ = per_row_stats(p.metric, outputs_of(settings, str(champion_version), test), refs)
    champ_score = score_from_stats(p.metric, champ)
    if p.rule == "margin":
        return promotion.decide(p.metric, challenger_version, chal_score, str(champion_version),
                                champ_score, p.margin)
    _, low, high = paired_bootstrap(p.metric, champ, chal, p.resamples, p.confidence,
                                    seed=settings.training.seed)
    return promotion.decide_paired(p.metric, challenger_version, str(champion_version),
                                   chal_score, champ_score, (low, high), p.margin, p.confidence,
                                   max_loss=p.max_loss)
