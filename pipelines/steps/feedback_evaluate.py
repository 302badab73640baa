"""Feedback step 2: score the champion on human labels, without the bias of how they were chosen.

Two biases make a plain "champion accuracy on new labels" useless: the champion may have been
trained on them, and the tasks annotators see first are the ones it is least sure of, so its
score there is low by construction (it would always look degraded). So:

- the estimate uses the HELD-OUT human labels only (`feedback.holdout_fraction`, a random share
  by a hash of the text, never trained on by any version);
- it is compared with what the champion itself expects on exactly those texts: the mean of its
  top-class probability. Hard texts lower both alike; a champion doing worse than its own
  confidence says has degraded. `adjusted` = test accuracy + (held-out accuracy - expected),
  kept within [0, 1], is the selection-adjusted estimate the absolute rule
  (`feedback.min_fresh_score`) is checked on.

A model version trained by the feedback loop carries the tag `labelloop.labels_seq`: the labels
store's sequence number when its training data was read; labels written after it are "new".
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import Settings
from pipelines.steps.common import settings_for

LABELS_SEQ_TAG = "labelloop.labels_seq"
FULL_SEQ_TAG = "labelloop.full_seq"


def champion_info(settings: Settings) -> Optional[dict[str, Any]]:
    """version, labels_seq and the test scores recorded for the champion (None if no champion)."""
    from labelloop import registry

    champion = registry.get_champion(settings)
    if champion is None:
        return None
    info: dict[str, Any] = {"version": str(champion.version),
                            "labels_seq": int(champion.tags.get(LABELS_SEQ_TAG, 0) or 0),
                            "full_seq": int(champion.tags.get(FULL_SEQ_TAG, 0) or 0),
                            "human_digest": champion.tags.get("labelloop.human_digest"),
                            "test": {}}
    try:
        run = registry.client(settings).get_run(champion.run_id)
        for key, value in run.data.metrics.items():
            if key.startswith("test_"):
                info["test"][key[len("test_"):]] = float(value)
    except Exception:  # noqa: BLE001 - a version without a run: no test score, no drop rule
        pass
    return info


def evaluate_on_fresh(settings: Settings, project: Optional[int] = None) -> dict[str, Any]:
    from labelloop import challenger, labels_store
    from labelloop.tasks import task_from_settings

    if settings.task.type == "generation":  # chrF and preference accuracy: the family's module
        from labelloop.generation import feedback as generation

        return generation.evaluate_on_fresh(settings, project)

    champ = champion_info(settings)
    with labels_store.open_store(settings) as store:
        new_since_run = store.new_labels_since_last_run()
        seq_now = store.current_seq()
        last_digest = store.get_meta(f"last_retrain_digest:{'all' if project is None else project}")
    human = challenger.human_labels(settings, max_seq=seq_now)
    task = task_from_settings(settings)
    if not human.empty:
        human = human[human["label"].map(lambda lab: lab in task.labels)]
    trainable, heldout = challenger.human_split(human, settings.feedback.holdout_fraction)
    out: dict[str, Any] = {
        "champion": champ, "fresh_labels": len(heldout), "fresh": None,
        "new_labels_since_last_retrain": new_since_run, "store_seq": seq_now,
        "human_labels": len(human), "trainable_labels": len(trainable),
        "new_trainable_labels": int((trainable["seq"] > (champ or {}).get("labels_seq", 0)).sum())
        if not trainable.empty else 0,
        "human_digest": challenger.human_digest(trainable), "last_retrain_digest": last_digest,
        "estimate": "held-out human labels",
    }
    if champ is None:
        print("fresh evaluation: no champion yet")
        return out
    if heldout.empty:
        print(f"fresh evaluation: champion v{champ['version']}: no held-out human labels yet "
              f"({len(human)} human labels, {settings.feedback.holdout_fraction:.0%} are held out)")
        return out
    clf = challenger.classifier_for(settings, champ["version"])
    probs = clf.task.predictions_from_logits(
        clf.logits(list(heldout["text"]), settings.evaluation.batch_size))
    refs = list(heldout["label"])
    correct = [p.label == r for p, r in zip(probs, refs)]
    accuracy = sum(correct) / len(correct)
    expected = sum(p.score for p in probs) / len(probs)
    from labelloop import evaluation

    f1 = evaluation.compute_metrics([task.encode_label(r) for r in refs],
                                    [task.encode_label(p.label) for p in probs], task)["macro_f1"]
    test_acc = champ["test"].get("accuracy")
    adjusted = selection_adjusted(test_acc, accuracy, expected)
    out["fresh"] = {"accuracy": accuracy, "macro_f1": float(f1), "expected_accuracy": expected,
                    "adjusted_accuracy": adjusted}
    print(f"fresh evaluation: champion v{champ['version']} on {len(heldout)} held-out human "
          f"labels: accuracy {accuracy:.4f} where its own confidence expects {expected:.4f}"
          + (f" (selection-adjusted {adjusted:.4f}; test accuracy {test_acc:.4f})"
             if adjusted is not None else ""))
    return out


def selection_adjusted(test_accuracy: Optional[float], accuracy: float,
                       expected: float) -> Optional[float]:
    """The test accuracy moved by how far the held-out labels beat (or miss) the champion's own
    confidence: an accuracy, so within [0, 1] (on 5 lucky labels the raw sum said 1.11)."""
    if test_accuracy is None:
        return None
    return min(1.0, max(0.0, test_accuracy + accuracy - expected))


@step(enable_cache=False)
def evaluate_fresh(
    sync_report: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    project: Optional[int] = None,
    turn: Optional[int] = None,
) -> Annotated[dict, "fresh_evaluation"]:
    from labelloop import loop_status

    settings = settings_for(config, overrides)
    loop_status.set_stage(settings, turn, "evaluate")
    return evaluate_on_fresh(settings, project)
