"""Step: score the new model on the frozen test split and log metrics, pictures and tables;
fit the TF-IDF + logistic-regression baseline on the same training rows and log it beside.
The model is scored as it will serve: through its bundle's Classifier, so with the decision
bias the bundle records (training.decision_bias), which the summary names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional, Tuple

import mlflow
import pandas as pd
from zenml import step

from labelloop import baseline, decision, evaluation, training
from labelloop.modeling import Classifier
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for


@step(experiment_tracker=TRACKER_NAME)
def evaluate_model(
    model_bundle: Path,
    train: pd.DataFrame,
    test: pd.DataFrame,
    validation: pd.DataFrame,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> Tuple[Annotated[dict, "metrics"], Annotated[list, "test_predicted"],
           Annotated[dict, "baseline"], Annotated[dict, "decision_bias"]]:
    settings = settings_for(config, overrides)
    if settings.task.type == "generation":
        return _evaluate_generation(settings, model_bundle, test)
    classifier = Classifier(model_bundle, device=settings.training.device)
    bias = classifier.meta.get(decision.META_KEY) or {}
    result = evaluation.evaluate_classifier(classifier, test, settings.evaluation.batch_size)
    evaluation.log_to_mlflow(result, settings.evaluation.sample_predictions)
    mlflow.log_params({"test_decision_rule": bias.get("rule", "argmax")})
    print("evaluation on the frozen test split"
          + (" (with the decision bias)" if bias else "") + ":\n" + result.summary())
    if bias:
        print(f"decision bias: {decision.describe(bias)}")
    if len(validation):
        val = evaluation.evaluate_classifier(classifier, validation,
                                             settings.evaluation.batch_size)
        mlflow.log_metrics({f"validation_{k}": v for k, v in val.metrics.items()})
        print(f"evaluation on the {len(validation)} validation rows: macro-F1 "
              f"{val.metrics['macro_f1']:.4f}, accuracy {val.metrics['accuracy']:.4f}"
              + (" (with the decision bias fitted on them)" if bias else ""))
    # The same rows, split and class weighting as the model: the comparison is on equal terms.
    weights = training.class_weights(settings.training.class_weights, list(train["label"]),
                                     classifier.task)
    base = baseline.fit_and_score(train, test, classifier.task, weights)
    metric = settings.promotion.metric
    beats = result.metrics[metric] > base.metrics[metric]
    mlflow.log_params({"baseline": base.name})
    mlflow.log_metrics({**{f"baseline_{k}": v for k, v in base.metrics.items()},
                        "baseline_seconds": base.fit_seconds, "beats_baseline": float(beats)})
    print(f"baseline {base.name} on the same split: macro-F1 {base.metrics['macro_f1']:.4f}, "
          f"accuracy {base.metrics['accuracy']:.4f} ({base.fit_seconds:.1f}s): the model "
          f"{'beats' if beats else 'does NOT beat'} it on {metric} "
          f"({result.metrics[metric]:.4f} vs {base.metrics[metric]:.4f})")
    # Label ids per test text, in test order: promotion's paired test needs them.
    predicted = [classifier.task.encode_label(lab) for lab in result.predictions["predicted"]]
    return result.metrics, predicted, {"name": base.name, **base.metrics, "beats": beats,
                                       "seconds": base.fit_seconds}, bias


def _evaluate_generation(settings, model_bundle: Path, test: pd.DataFrame):
    """Fine-tuned and base model on the same test rows; the outputs go on to promotion."""
    from labelloop.generation import evaluation as gen_eval
    from labelloop.generation import steps as generation

    result = generation.evaluate(settings, model_bundle, test)
    gen_eval.log_to_mlflow(result, settings.evaluation.sample_predictions)
    print("evaluation on the frozen test split (fine-tuned vs base):\n" + result.summary())
    metrics = {k[len("test_"):]: v for k, v in result.metrics.items() if k.startswith("test_")}
    metrics.update({k: v for k, v in result.metrics.items() if not k.startswith("test_")})
    return metrics, result.outputs, {}, {}  # no baseline for generation (yet), no bias
