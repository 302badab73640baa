"""Champion/challenger: the rule that decides whether a new model version takes over.

Both models are scored on the same frozen test split. Two rules (`promotion.rule`):

- `paired` (default): the score difference is judged against what chance explains, by a paired
  bootstrap over the same test texts (both models' predictions on one resample each time, so
  the texts' own difficulty cancels out). A challenger worse beyond chance is kept out; one
  better beyond chance (and by at least `margin`) goes in; in between, the human labels decide:
  better (or worse) beyond chance on the held-out human labels, by an exact sign test on the
  texts only one of the two gets right; where those are within noise or missing, it learned
  more of the corrections it was trained on than the champion knew, and lost at most
  `max_loss` on the test split, against the champion and against the best version promoted
  earlier on this test split (so losses each within `max_loss` cannot add up over turns).
  (The held-out labels are few in the first turns: one text of
  four apart used to veto a challenger that was better on the test split and had learned every
  correction. The corrections are the challenger's own training rows, so any challenger learns
  them, one trained on random labels too; the test split's point estimate is then the only
  check left.)
- `margin`: the challenger must beat the champion by at least `margin`, nothing else.

Kept free of I/O so it is trivially testable; `reason` is one line a person can read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    challenger_version: str
    challenger_score: float
    champion_version: Optional[str]
    champion_score: Optional[float]
    margin: float
    rule: str = "margin"
    # paired rule: the bootstrap interval of challenger - champion on the test split
    interval: Optional[tuple[float, float]] = None
    confidence: Optional[float] = None
    # human evidence: {"heldout": {"n", "challenger", "champion"}, "corrections": {...}}
    human: dict = field(default_factory=dict)
    # the TF-IDF baseline fitted on the same rows (labelloop.baseline), same metric and split
    baseline_score: Optional[float] = None
    beats_baseline: Optional[bool] = None

    def to_dict(self) -> dict:
        return asdict(self)


def with_baseline(decision: PromotionDecision, baseline_score: Optional[float], required: bool,
                  name: str = "tfidf+logreg") -> PromotionDecision:
    """The decision, saying whether the challenger beats the baseline on the test split; with
    `required` (promotion.require_beats_baseline), a challenger that does not is kept out."""
    if baseline_score is None or math.isnan(baseline_score):
        return decision
    beats = bool(decision.challenger_score is not None
                 and decision.challenger_score > baseline_score)
    verdict = (f"{'beats' if beats else 'does not beat'} the {name} baseline "
               f"({decision.challenger_score:.4f} vs {baseline_score:.4f} {decision.metric})")
    if required and not beats and decision.promote:
        return replace(decision, promote=False, baseline_score=baseline_score, beats_baseline=beats,
                       reason=f"kept out: the challenger {verdict} and "
                              f"promotion.require_beats_baseline is set (else: {decision.reason})")
    return replace(decision, baseline_score=baseline_score, beats_baseline=beats,
                   reason=f"{decision.reason}; the challenger {verdict}")


# -- the paired bootstrap ----------------------------------------------------------------------
def _scores(refs: np.ndarray, preds: np.ndarray, n_labels: int, metric: str) -> np.ndarray:
    """Row-wise metric over resamples: refs/preds are (resamples, n) integer arrays."""
    if metric == "accuracy":
        return (refs == preds).mean(axis=1)
    f1s = []
    for c in range(n_labels):
        tp = ((preds == c) & (refs == c)).sum(axis=1)
        fp = ((preds == c) & (refs != c)).sum(axis=1)
        fn = ((preds != c) & (refs == c)).sum(axis=1)
        denom = 2 * tp + fp + fn
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(f1s, axis=0)


def score(refs: Sequence[int], preds: Sequence[int], n_labels: int, metric: str) -> float:
    return float(_scores(np.asarray(refs)[None, :], np.asarray(preds)[None, :], n_labels, metric)[0])


def paired_bootstrap(refs: Sequence[int], champion: Sequence[int], challenger: Sequence[int],
                     n_labels: int, metric: str, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high): challenger - champion on the full set and its percentile interval.

    Each resample draws the same texts for both models, so only their disagreements move the
    difference; a few thousand texts x 1,000 resamples take well under a second.
    """
    refs, a, b = (np.asarray(x, dtype=np.int64) for x in (refs, champion, challenger))
    if not (len(refs) == len(a) == len(b)) or len(refs) == 0:
        raise ValueError("paired bootstrap needs the same, non-empty set of texts for both models")
    diff = score(refs, b, n_labels, metric) - score(refs, a, n_labels, metric)
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, resamples, 100):  # chunks bound memory at 100 x n
        idx = rng.integers(0, len(refs), size=(min(100, resamples - start), len(refs)))
        r = refs[idx]
        deltas.append(_scores(r, b[idx], n_labels, metric) - _scores(r, a[idx], n_labels, metric))
    deltas = np.concatenate(deltas)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(diff), float(low), float(high)


# -- the decision ------------------------------------------------------------------------------
def decide(
    metric: str,
    challenger_version: str,
    challenger_score: float,
    champion_version: Optional[str],
    champion_score: Optional[float],
    margin: float,
) -> PromotionDecision:
    """The fixed-margin rule."""
    def make(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, metric, str(challenger_version), challenger_score,
                                 champion_version, champion_score, margin)

    early = _preconditions(challenger_score, champion_version, challenger_version, champion_score)
    if early is not None:
        return make(*early)
    gain = challenger_score - champion_score
    if gain >= margin:
        return make(True, f"challenger beats champion by {gain:+.4f} {metric} (margin {margin})")
    return make(False, f"challenger {gain:+.4f} {metric} vs champion, below margin {margin}")


def _preconditions(challenger_score, champion_version, challenger_version, champion_score):
    if challenger_score is None or math.isnan(challenger_score):
        return False, "challenger has no valid score"
    if champion_version is None:
        return True, "no champion yet: the first model becomes champion"
    if str(champion_version) == str(challenger_version):
        return False, "challenger is already the champion"
    if champion_score is None or math.isnan(champion_score):
        return True, "current champion could not be scored"
    return None


def _fmt_human(name: str, h: Optional[dict]) -> str:
    if not h or not h.get("n"):
        return f"no {name}"
    return f"{name} {h['challenger']:.2f} vs {h['champion']:.2f} on {h['n']}"


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: how likely a split at least this uneven is between two equally
    good models, counting only the texts exactly one of them gets right."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def heldout_verdict(h: Optional[dict], confidence: float) -> int:
    """+1 / -1: the challenger better / worse beyond chance on held-out human labels
    (`challenger_only` / `champion_only`: texts only it / only the champion gets right); 0:
    within noise, or none."""
    h = h or {}
    wins, losses = int(h.get("challenger_only", 0)), int(h.get("champion_only", 0))
    if not h.get("n") or wins == losses or sign_test_p(wins, losses) >= 1.0 - confidence:
        return 0
    return 1 if wins > losses else -1


def loss_beyond(max_loss: float, metric: str, challenger_score: float, champion_score: float,
                 best: Optional[tuple[str, float]]) -> Optional[str]:
    """Why a challenger backed only by what it trained on may not go in: it lost more than
    `max_loss` of the test score against the champion, or against `best` (version, score), the
    best version promoted earlier on this test split; None when it did not. Each turn's loss is
    bounded by the champion, the sum of many turns' losses by `best`."""
    loss = champion_score - challenger_score
    if loss > max_loss:
        return f"lost {loss:.4f}"
    if best is not None and best[1] - challenger_score > max_loss:
        return (f"is {best[1] - challenger_score:.4f} {metric} below v{best[0]} ({best[1]:.4f}), "
                f"the best champion on this test split,")
    return None


def decide_paired(
    metric: str,
    challenger_version: str,
    champion_version: Optional[str],
    challenger_score: float,
    champion_score: Optional[float],
    interval: Optional[tuple[float, float]],
    margin: float,
    confidence: float,
    heldout: Optional[dict] = None,
    corrections: Optional[dict] = None,
    *,
    max_loss: float,
    best: Optional[tuple[str, float]] = None,
) -> PromotionDecision:
    """The noise-aware rule. `heldout` / `corrections`: {"n", "challenger", "champion"} accuracies
    on the held-out human labels and on the human labels the challenger trained on; `max_loss`:
    the most the challenger may lose on the test split when only its corrections speak for it,
    against the champion and against `best` (version, score: the best version promoted earlier
    on this test split; None: no such version)."""
    human = {"heldout": heldout or {}, "corrections": corrections or {}}

    def make(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, metric, str(challenger_version), challenger_score,
                                 champion_version, champion_score, margin, rule="paired",
                                 interval=tuple(interval) if interval else None,
                                 confidence=confidence, human=human)

    early = _preconditions(challenger_score, champion_version, challenger_version, champion_score)
    if early is not None:
        return make(*early)
    if interval is None:
        raise ValueError("the paired rule needs the bootstrap interval")
    low, high = interval
    gain = challenger_score - champion_score
    test = (f"test {metric} {challenger_score:.4f} vs {champion_score:.4f} ({gain:+.4f}, paired "
            f"bootstrap {confidence:.0%} interval [{low:+.4f}, {high:+.4f}])")
    verdict = heldout_verdict(heldout, confidence)
    held = _fmt_human("held-out human labels", heldout)
    if verdict == 0 and (heldout or {}).get("n") and heldout["challenger"] != heldout["champion"]:
        held += ", within noise"
    evidence = f"{held}; {_fmt_human('corrections', corrections)}"
    if high < 0:
        return make(False, f"kept the champion: worse beyond chance on the {test}")
    if low > 0 and gain >= margin:
        return make(True, f"promoted: better beyond chance on the {test}")
    c = corrections or {}
    if verdict > 0:
        return make(True, f"promoted: within noise on the {test}, better beyond chance on "
                          f"held-out human labels ({evidence})")
    if verdict < 0:
        return make(False, f"kept the champion: within noise on the {test}, worse beyond chance "
                           f"on held-out human labels ({evidence})")
    if c.get("n") and c["challenger"] > c["champion"]:
        lost = loss_beyond(max_loss, metric, challenger_score, champion_score, best)
        if lost:
            return make(False, f"kept the champion: learned the corrections but {lost} on the "
                               f"{test}, more than promotion.max_loss {max_loss} ({evidence})")
        return make(True, f"promoted: within noise on the {test}, learned the corrections "
                          f"({evidence})")
    return make(False, f"kept the champion: within noise on the {test} and no better on human "
                       f"labels ({evidence})")
