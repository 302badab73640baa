"""Champion/challenger: the rule that decides whether a new model version takes over.

Both models are scored on the same frozen test split; the challenger must beat the champion by
at least `margin` on the configured metric. Kept free of I/O so it is trivially testable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional


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

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    metric: str,
    challenger_version: str,
    challenger_score: float,
    champion_version: Optional[str],
    champion_score: Optional[float],
    margin: float,
) -> PromotionDecision:
    def make(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, metric, str(challenger_version), challenger_score,
                                 champion_version, champion_score, margin)

    if challenger_score is None or math.isnan(challenger_score):
        return make(False, "challenger has no valid score")
    if champion_version is None:
        return make(True, "no champion yet: the first model becomes champion")
    if str(champion_version) == str(challenger_version):
        return make(False, "challenger is already the champion")
    if champion_score is None or math.isnan(champion_score):
        return make(True, "current champion could not be scored")
    gain = challenger_score - champion_score
    if gain >= margin:
        return make(True, f"challenger beats champion by {gain:+.4f} {metric} (margin {margin})")
    return make(False, f"challenger {gain:+.4f} {metric} vs champion, below margin {margin}")
