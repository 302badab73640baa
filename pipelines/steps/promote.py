"""Step: champion/challenger on the same frozen test split; move the alias only on a win."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import mlflow
import pandas as pd
from zenml import get_step_context, log_metadata, step

from labelloop import data, evaluation, promotion, registry
from labelloop.modeling import Classifier
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for


def recorded_score(tags: dict, metric: str, test_digest: str) -> Optional[float]:
    """The champion's recorded score, if it was measured on the same test rows; else None."""
    if tags.get("test_digest") != test_digest or f"test_{metric}" not in tags:
        return None
    try:
        return float(tags[f"test_{metric}"])
    except ValueError:
        return None


@step(experiment_tracker=TRACKER_NAME)
def promote_model(
    model_version: str,
    metrics: dict,
    test: pd.DataFrame,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> Annotated[dict, "promotion_decision"]:
    settings = settings_for(config, overrides)
    metric = settings.promotion.metric
    champion = registry.get_champion(settings)
    champion_version, champion_score = None, None
    if champion is not None and str(champion.version) != str(model_version):
        champion_version = str(champion.version)
        champion_score = recorded_score(champion.tags, metric, data.digest(test))
        if champion_score is None:
            # The champion was scored on other test rows (or not at all): score it now, on
            # exactly this split, so the comparison is like for like.
            classifier = Classifier(registry.fetch_bundle(settings, champion.version),
                                    device=settings.training.device)
            champion_score = evaluation.evaluate_classifier(
                classifier, test, settings.evaluation.batch_size).metrics[metric]
            print(f"promotion: champion {champion_version} re-scored on this test split")
        else:
            print(f"promotion: champion {champion_version} was scored on these exact test rows "
                  f"(same digest); reusing its {metric}")
    decision = promotion.decide(metric, model_version, metrics[metric],
                                champion_version, champion_score, settings.promotion.margin)
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
