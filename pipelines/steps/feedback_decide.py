"""Feedback step 3: decide whether to retrain, and say why (printed and logged to MLflow).

Retrain when any of these holds (FeedbackSettings):
- there is no champion yet;
- `force_retrain` is set;
- the champion's score on fresh human labels (`fresh_metric`, over at least `min_fresh_labels`
  labels) is below `min_fresh_score`;
- that score is more than `max_drop` below the champion's score on the frozen test split;
- at least `min_new_labels` human labels were written since the last retrain.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import FeedbackSettings
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for


def decide(fresh_eval: dict[str, Any], cfg: FeedbackSettings) -> dict[str, Any]:
    """Pure decision from the fresh evaluation: {"retrain": bool, "reasons": [...], ...}."""
    reasons: list[str] = []
    champ = fresh_eval.get("champion")
    metric = cfg.fresh_metric
    n_fresh = int(fresh_eval.get("fresh_labels") or 0)
    n_new = int(fresh_eval.get("new_labels_since_last_retrain") or 0)
    fresh_score = (fresh_eval.get("fresh") or {}).get(metric)
    test_score = (champ or {}).get("test", {}).get(metric) if champ else None
    if champ is None:
        reasons.append("no champion yet: train the first one")
    if cfg.force_retrain:
        reasons.append("feedback.force_retrain is set")
    if fresh_score is not None and n_fresh >= cfg.min_fresh_labels:
        if fresh_score < cfg.min_fresh_score:
            reasons.append(f"fresh {metric} {fresh_score:.4f} on {n_fresh} labels is below "
                           f"feedback.min_fresh_score {cfg.min_fresh_score:.4f}")
        if test_score is not None and test_score - fresh_score > cfg.max_drop:
            reasons.append(f"fresh {metric} {fresh_score:.4f} is {test_score - fresh_score:.4f} "
                           f"below the test {metric} {test_score:.4f} (feedback.max_drop "
                           f"{cfg.max_drop:.4f})")
    if n_new >= cfg.min_new_labels:
        reasons.append(f"{n_new} new human labels since the last retrain "
                       f"(feedback.min_new_labels {cfg.min_new_labels})")
    retrain = bool(reasons)
    if not retrain:
        bits = [f"{n_new} new labels < feedback.min_new_labels {cfg.min_new_labels}"]
        if fresh_score is None:
            bits.append("no fresh labels to score the champion on")
        elif n_fresh < cfg.min_fresh_labels:
            bits.append(f"only {n_fresh} fresh labels (< feedback.min_fresh_labels "
                        f"{cfg.min_fresh_labels}) to judge the score rules")
        else:
            bits.append(f"fresh {metric} {fresh_score:.4f} is fine")
        reasons.append("keep the champion: " + "; ".join(bits))
    return {
        "retrain": retrain, "reason": "; ".join(reasons), "reasons": reasons,
        "champion_version": champ["version"] if champ else None,
        "metric": metric, "fresh_score": fresh_score, "test_score": test_score,
        "fresh_labels": n_fresh, "new_labels": n_new,
    }


@step(enable_cache=False, experiment_tracker=TRACKER_NAME)
def decide_retrain(
    fresh_evaluation: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    reason: str = "cli",
    project: Optional[int] = None,
) -> Annotated[dict, "retrain_decision"]:
    import mlflow

    settings = settings_for(config, overrides)
    decision = decide(fresh_evaluation, settings.feedback)
    decision["trigger"] = reason
    decision["project"] = project
    mlflow.set_tags({"labelloop.kind": "feedback", "labelloop.trigger": reason,
                     "labelloop.project": "all" if project is None else str(project),
                     "labelloop.decision": "retrain" if decision["retrain"] else "keep"})
    mlflow.log_params({"trigger": reason, "decision": "retrain" if decision["retrain"] else "keep",
                       "decision_reason": decision["reason"][:500],
                       "champion_version": decision["champion_version"]})
    metrics = {"fresh_labels": decision["fresh_labels"], "new_labels": decision["new_labels"],
               "retrain": float(decision["retrain"])}
    for key, value in (fresh_evaluation.get("fresh") or {}).items():
        metrics[f"fresh_{key}"] = value
    mlflow.log_metrics(metrics)
    mlflow.log_dict({"decision": decision, "fresh_evaluation": fresh_evaluation},
                    "feedback/decision.json")
    print(f"decision: {'RETRAIN' if decision['retrain'] else 'keep the champion'} - "
          f"{decision['reason']}")
    return decision
