"""Step: champion/challenger on the same frozen test split; move the alias only on a win."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import mlflow
import numpy as np
import pandas as pd
from zenml import get_step_context, log_metadata, step

from labelloop import challenger, promotion, registry
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for


@step(experiment_tracker=TRACKER_NAME)
def promote_model(
    model_version: str,
    metrics: dict,
    test: pd.DataFrame,
    test_predicted: list,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    baseline: Optional[dict] = None,
) -> Annotated[dict, "promotion_decision"]:
    """The rule of `promotion.rule` (labelloop.challenger.judge). A training run has no human
    labels of its own to break a tie within noise, so there the champion stays. The decision
    says whether the challenger beats the TF-IDF baseline of its run; with
    `promotion.require_beats_baseline` one that does not is never promoted."""
    settings = settings_for(config, overrides)
    champion = registry.get_champion(settings)
    champion_version = None
    if champion is not None and str(champion.version) != str(model_version):
        champion_version = str(champion.version)
    if settings.task.type == "generation":
        from labelloop.generation import promotion as gen_promotion

        decision = gen_promotion.judge(settings, model_version, list(test_predicted), test,
                                       champion_version)
    else:
        empty = pd.DataFrame(columns=["text", "label"])
        decision = challenger.judge(settings, model_version, np.asarray(test_predicted), None,
                                    test, champion_version, empty, empty)
        if baseline:
            decision = promotion.with_baseline(decision, baseline.get(settings.promotion.metric),
                                               settings.promotion.require_beats_baseline,
                                               baseline.get("name", "baseline"))
    champion_score = decision.champion_score
    if decision.promote:
        registry.set_champion(settings, model_version)
        try:
            get_step_context().model.set_stage("production", force=True)
        except Exception as exc:  # noqa: BLE001 - the MLflow alias is the source of truth
            print(f"note: could not set the ZenML model stage: {exc}")
    mlflow.log_dict(decision.to_dict(), "promotion/decision.json")
    mlflow.log_metrics({
        "promotion_challenger_score": decision.challenger_score,
        "promoted": float(decision.promote),
        **({"promotion_champion_score": champion_score} if champion_score is not None else {}),
    })
    mlflow.set_tag("promotion", "promoted" if decision.promote else "kept champion")
    log_metadata({"promotion": decision.to_dict()}, infer_model=True)
    print(f"promotion: {'PROMOTED' if decision.promote else 'not promoted'} - {decision.reason}")
    return decision.to_dict()
