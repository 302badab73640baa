"""Feedback step 4: when the decision says so, train a challenger in this process, register it
and promote it only if it is better (labelloop.challenger, labelloop.promotion).

The rule (`feedback.train_rule`) picks a warm start (the champion continued on the new human
labels plus a replay sample: seconds on a CPU) or a full retrain from the base model (base data
plus all trainable human labels). Held-out human labels (`feedback.holdout_fraction`) and the
frozen test split are never trained on. The training is one MLflow run nested under the turn's
run, named after the version it registers. The new version is tagged with the labels-store seq
its data was read at (`labelloop.labels_seq`: what later turns call "seen") and the seq of the
last full retrain behind it (`labelloop.full_seq`, for the auto rule).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import Settings
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for
from pipelines.steps.feedback_evaluate import LABELS_SEQ_TAG, champion_info


def retrain(settings: Settings, project: Optional[int] = None,
            turn: Optional[int] = None) -> dict[str, Any]:
    """Train, score, register and (maybe) promote one challenger; returns what happened."""
    import mlflow

    from labelloop import challenger, data, evaluation, labels_store, loop_status, modeling, \
        provenance, registry, scratch, training
    from labelloop.cleaning import Cleaning
    from labelloop.tasks import task_from_settings

    if settings.task.type == "generation":  # SFT (+ DPO) from the base: the family's module
        from labelloop.generation import feedback as generation

        return generation.retrain(settings, project, turn)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    task = task_from_settings(settings)
    with labels_store.open_store(settings) as store:
        seq = store.current_seq()  # labels up to here are what the challenger trains on
    human = challenger.human_labels(settings, max_seq=seq)
    trainable, heldout = challenger.human_split(human, settings.feedback.holdout_fraction)
    champ = champion_info(settings)
    rule, why = challenger.choose_rule(settings, champ, seq)
    splits = data.load_splits(settings.dataset, task)
    base_train, test = splits.train, splits.test
    seen_seq = int(champ["labels_seq"]) if champ else 0
    new = trainable[trainable["seq"] > seen_seq] if rule == "warm" else trainable
    champion_bundle = None
    if rule == "warm":
        champion_bundle = registry.fetch_bundle(settings, champ["version"])
        training.check_warm_start(champion_bundle, task)  # a clear error before any work
    rows = challenger.training_rows(settings, rule, base_train, test, trainable, new)
    timings["prepare_s"] = time.perf_counter() - t0
    cfg = challenger.warm_training_settings(settings) if rule == "warm" else settings.training
    cfg = training.resolve(cfg, len(rows))
    total_steps = training.plan(cfg, len(rows)).steps
    print(f"retrain: {rule} ({why}): {len(rows)} rows = {len(new)} new human labels"
          f"{' x ' + str(settings.feedback.warm_start.new_label_repeats) if rule == 'warm' else ''}"
          f" + earlier rows; {len(heldout)} human labels held out; {total_steps} steps")

    def on_log(step_no: int, values: dict[str, float]) -> None:
        mlflow.log_metrics(values, step=step_no)
        loop_status.set_stage(settings, turn, "train",
                              (3 + min(1.0, step_no / total_steps)) / len(loop_status.STAGES))

    version_guess = registry.next_version(settings)
    tmp = scratch.make(settings, "challenger")  # a killed turn's leftovers go next time
    try:
        with mlflow.start_run(run_name=f"training v{version_guess} ({rule})", nested=True) as run:
            mlflow.set_tags({"labelloop.kind": "training", "labelloop.train_rule": rule})
            mlflow.log_params({"train_rule": rule, "train_rule_why": why[:250],
                               "train_rows": len(rows), "new_human_labels": len(new),
                               "heldout_human_labels": len(heldout), "method": cfg.method,
                               "epochs": cfg.epochs, "learning_rate": cfg.learning_rate,
                               "batch_size": cfg.batch_size,
                               "warm_from": champ["version"] if rule == "warm" else None})
            t1 = time.perf_counter()
            result = challenger.train(settings, rule, rows, champion_bundle, on_log=on_log)
            timings["train_s"] = time.perf_counter() - t1
            record = provenance.record(splits, rows, trainable, seq,
                                       Cleaning.from_settings(settings.dataset.cleaning),
                                       settings.model.truncation)
            provenance.log_inputs(record, rows, test)
            bundle = modeling.save_bundle(result.model, result.tokenizer, tmp / "bundle", {
                "task": task.to_dict(), "base_model": result.base_model,
                "max_length": settings.model.max_length, "method": cfg.method,
                "dataset": settings.dataset.path, **record, "train_rule": rule,
                "warm_from": champ["version"] if rule == "warm" else None,
            })
            del result
            if settings.training.decision_bias != "off":  # refitted for this challenger
                from labelloop import decision

                bias = decision.fit_for_bundle(bundle, splits.validation,
                                               settings.training.decision_bias,
                                               device=settings.training.device,
                                               batch_size=settings.evaluation.batch_size)
                print(f"retrain: decision bias {decision.describe(bias)}")
            t2 = time.perf_counter()
            loop_status.set_stage(settings, turn, "promote")
            clf = modeling.Classifier(bundle, device=settings.training.device)
            scored = evaluation.evaluate_classifier(clf, test, settings.evaluation.batch_size)
            evaluation.log_to_mlflow(scored, settings.evaluation.sample_predictions)
            ids = scored.predictions["predicted"].map(task.encode_label).to_numpy()
            timings["test_eval_s"] = time.perf_counter() - t2
            t3 = time.perf_counter()
            mlflow.log_artifacts(str(bundle), registry.BUNDLE_ARTIFACT_PATH)
            test_digest = data.digest(test)
            full_seq = seq if rule == "full" else int((champ or {}).get("full_seq") or 0)
            mv = registry.register_bundle(settings, run.info.run_id, tags={
                "task": task.name, "base_model": result_base(bundle), "method": cfg.method,
                "dataset_digest": data.digest(rows), "test_digest": test_digest,
                provenance.SOURCE_DIGEST_TAG: record["source_digest"],
                **{f"test_{k}": repr(float(scored.metrics[k])) for k in ("macro_f1", "accuracy")},
                LABELS_SEQ_TAG: str(seq), challenger.FULL_SEQ_TAG: str(full_seq),
                challenger.RULE_TAG: rule,
                "labelloop.human_digest": challenger.human_digest(trainable),
            })
            version = str(mv.version)
            mlflow.set_tag("mlflow.runName", f"training v{version} ({rule})")
            challenger.store_test_predictions(settings, version, test_digest, ids)
            timings["register_s"] = time.perf_counter() - t3
            t4 = time.perf_counter()
            clf.version = version
            challenger._classifiers[(settings.registry.model_name, version)] = clf
            decision = challenger.judge(settings, version, ids, clf, test,
                                        champ["version"] if champ else None, heldout, new)
            if decision.promote:
                registry.set_champion(settings, version)
            timings["judge_s"] = time.perf_counter() - t4
            mlflow.log_dict(decision.to_dict(), "promotion/decision.json")
            mlflow.log_metrics({"promoted": float(decision.promote), **{
                f"time_{k}": v for k, v in timings.items()}})
            mlflow.set_tag("promotion", decision.reason[:5000])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with labels_store.open_store(settings) as store:
        store.mark_feedback_run(None, "retrain", seq)
        if project is not None:
            store.mark_feedback_run(project, "retrain", seq)
        store.set_meta(f"last_retrain_digest:{'all' if project is None else project}",
                       challenger.human_digest(trainable))
    return {"version": version, "promoted": bool(decision.promote), "rule": rule,
            "rule_reason": why, "promotion_reason": decision.reason,
            "decision": decision.to_dict(), "metrics": scored.metrics, "labels_seq": seq,
            "champion_before": champ["version"] if champ else None, "timings": timings,
            "train_rows": len(rows), "new_labels": len(new), "heldout_labels": len(heldout)}


def result_base(bundle: Path) -> str:
    from labelloop.modeling import read_bundle_meta

    return str(read_bundle_meta(bundle).get("base_model", ""))


@step(enable_cache=False, experiment_tracker=TRACKER_NAME)
def retrain_if_needed(
    retrain_decision: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    project: Optional[int] = None,
    turn: Optional[int] = None,
) -> Annotated[dict, "retrain_result"]:
    from labelloop import loop_status

    if not retrain_decision.get("retrain"):
        print("retrain: not needed")
        return {"retrained": False}
    settings = settings_for(config, overrides)
    loop_status.set_stage(settings, turn, "train")
    result = retrain(settings, project, turn)
    print(f"retrain: version {result['version']} "
          f"{'PROMOTED to champion' if result['promoted'] else 'not promoted'} - "
          f"{result['promotion_reason']}")
    return {"retrained": True, **result}
