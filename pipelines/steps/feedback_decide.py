"""Feedback step 3: decide whether to retrain, and say why (printed and logged to MLflow).

Never when the trainable human labels are exactly those of the last retrain (the same data
gives the same model: the decision says so instead), unless `force_retrain` is set. Otherwise
retrain when any of these holds (FeedbackSettings):
- there is no champion yet;
- `force_retrain` is set;
- someone asked for training (Label Studio's "Start training", `labelloop feedback --train`)
  and there are new trainable labels;
- at least `min_new_labels` human labels were written since the last retrain;
- on the held-out human labels (at least `min_fresh_labels`), the champion is more than
  `max_drop` below what its own confidence expects on those texts, or its selection-adjusted
  accuracy is below `min_fresh_score` (see feedback_evaluate: both are free of the bias of
  least-certain-first ordering). With `fresh_metric: macro_f1` the held-out macro-F1 is compared
  with the test macro-F1 directly, and the decision says that estimate is not adjusted.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import FeedbackSettings
from labelloop.trigger import ASKED_TO_TRAIN, START_TRAINING_BUTTON
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for



def describe_estimate(fresh_eval: dict[str, Any], metric: str) -> str:
    fresh = fresh_eval.get("fresh") or {}
    n = int(fresh_eval.get("fresh_labels") or 0)
    if not fresh:
        return f"estimate: no held-out human labels to score the champion on ({n})"
    if metric == "accuracy":
        adj = fresh.get("adjusted_accuracy")
        return (f"estimate: {n} held-out human labels, accuracy {fresh['accuracy']:.4f} vs "
                f"{fresh['expected_accuracy']:.4f} expected from the champion's confidence"
                + (f", selection-adjusted {adj:.4f}" if adj is not None else ""))
    return (f"estimate: {n} held-out human labels, macro-F1 {fresh['macro_f1']:.4f} "
            "(not adjusted for how tasks were ordered)")


def decide(fresh_eval: dict[str, Any], cfg: FeedbackSettings, trigger: str = "cli") -> dict[str, Any]:
    """Pure decision from the fresh evaluation: {"retrain": bool, "reasons": [...], ...}."""
    reasons: list[str] = []
    champ = fresh_eval.get("champion")
    metric = cfg.fresh_metric
    n_fresh = int(fresh_eval.get("fresh_labels") or 0)
    n_new = int(fresh_eval.get("new_labels_since_last_retrain") or 0)
    n_new_trainable = int(fresh_eval.get("new_trainable_labels") or 0)
    fresh = fresh_eval.get("fresh") or {}
    test = (champ or {}).get("test", {}) if champ else {}
    generation = fresh_eval.get("family") == "generation"
    if generation:
        from labelloop.generation import feedback as gen_feedback

        metric = "chrf"
        estimate = gen_feedback.describe_estimate(fresh_eval)
    else:
        estimate = describe_estimate(fresh_eval, metric)
    digest = fresh_eval.get("human_digest")
    identical = (champ is not None and digest is not None
                 and digest in {fresh_eval.get("last_retrain_digest"), champ.get("human_digest")})
    if champ is None:
        reasons.append("no champion yet: train the first one")
    if cfg.force_retrain:
        reasons.append("feedback.force_retrain is set")
    if identical and not reasons:
        return _result(False, [f"keep the champion: the trainable human labels are identical to "
                               f"the last retrain's (digest {digest}); retraining on the same "
                               f"data would give the same model"], champ, metric, fresh, test,
                       n_fresh, n_new, estimate, identical)
    if trigger.startswith(ASKED_TO_TRAIN) and n_new_trainable > 0:
        who = "an annotator" if trigger.startswith(START_TRAINING_BUTTON) else "you"
        reasons.append(f"{who} asked for training and {n_new_trainable} new trainable labels "
                       "are there")
    if generation:  # chrF against final responses, preference accuracy (their own rules)
        reasons.extend(gen_feedback.fresh_reasons(fresh, cfg))
    elif fresh and n_fresh >= cfg.min_fresh_labels:
        if metric == "accuracy":
            gap = fresh["accuracy"] - fresh["expected_accuracy"]
            if gap < -cfg.max_drop:
                reasons.append(f"held-out accuracy {fresh['accuracy']:.4f} is {-gap:.4f} below "
                               f"the {fresh['expected_accuracy']:.4f} the champion's confidence "
                               f"expects (feedback.max_drop {cfg.max_drop:.4f})")
            adj = fresh.get("adjusted_accuracy")
            if adj is not None and adj < cfg.min_fresh_score:
                reasons.append(f"selection-adjusted accuracy {adj:.4f} is below "
                               f"feedback.min_fresh_score {cfg.min_fresh_score:.4f}")
        else:
            score, ref = fresh["macro_f1"], test.get("macro_f1")
            if score < cfg.min_fresh_score:
                reasons.append(f"held-out macro-F1 {score:.4f} is below feedback.min_fresh_score "
                               f"{cfg.min_fresh_score:.4f} (not adjusted for ordering)")
            if ref is not None and ref - score > cfg.max_drop:
                reasons.append(f"held-out macro-F1 {score:.4f} is {ref - score:.4f} below the "
                               f"test macro-F1 {ref:.4f} (feedback.max_drop {cfg.max_drop:.4f})")
    if n_new >= cfg.min_new_labels:
        reasons.append(f"{n_new} new human labels since the last retrain "
                       f"(feedback.min_new_labels {cfg.min_new_labels})")
    retrain = bool(reasons)
    if not retrain:
        bits = [f"{n_new} new labels < feedback.min_new_labels {cfg.min_new_labels}"]
        if not fresh:
            bits.append("no held-out labels to score the champion on")
        elif n_fresh < cfg.min_fresh_labels:
            bits.append(f"only {n_fresh} held-out labels (< feedback.min_fresh_labels "
                        f"{cfg.min_fresh_labels}) to judge the score rules")
        else:
            bits.append("the champion holds up on the held-out labels")
        reasons.append("keep the champion: " + "; ".join(bits))
    return _result(retrain, reasons, champ, metric, fresh, test, n_fresh, n_new, estimate,
                   identical)


def _result(retrain, reasons, champ, metric, fresh, test, n_fresh, n_new, estimate, identical):
    return {
        "retrain": retrain, "reason": "; ".join(reasons), "reasons": reasons,
        "champion_version": champ["version"] if champ else None,
        "metric": metric, "fresh_score": (fresh or {}).get(metric),
        "test_score": (test or {}).get(metric), "fresh_labels": n_fresh, "new_labels": n_new,
        "estimate": estimate, "identical_data": bool(identical),
    }


@step(enable_cache=False, experiment_tracker=TRACKER_NAME)
def decide_retrain(
    fresh_evaluation: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    reason: str = "cli",
    project: Optional[int] = None,
    turn: Optional[int] = None,
) -> Annotated[dict, "retrain_decision"]:
    import mlflow

    from labelloop import loop_status

    settings = settings_for(config, overrides)
    loop_status.set_stage(settings, turn, "decide")
    decision = decide(fresh_evaluation, settings.feedback, reason)
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
        if value is not None:
            metrics[f"fresh_{key}"] = value
    mlflow.log_metrics(metrics)
    mlflow.log_dict({"decision": decision, "fresh_evaluation": fresh_evaluation},
                    "feedback/decision.json")
    print(f"decision: {'RETRAIN' if decision['retrain'] else 'keep the champion'} - "
          f"{decision['reason']} ({decision['estimate']})")
    return decision
