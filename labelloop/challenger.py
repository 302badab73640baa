"""One challenger, trained and judged inside the feedback turn: no child process, no second
pipeline run, one model load per version.

- `human_split`: human labels split into trainable and held out (a random share by a hash of the
  text, `feedback.holdout_fraction`: never trained on, so they score champion and challenger
  without bias from what either was trained on);
- `choose_rule`: warm start (continue the champion on the new labels plus a replay sample) or a
  full retrain from the base model (`feedback.train_rule`);
- `training_rows` / `train`: the rows and the fine-tuning for that rule;
- `test_predictions`: a version's predictions on the frozen test split, computed once per
  version and test digest and cached under the data dir;
- `judge`: the promotion decision (labelloop.promotion) from the test split and the human labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from labelloop import data, promotion
from labelloop.data import text_bucket
from labelloop.settings import ConfigError, Settings, TrainingSettings

FULL_SEQ_TAG = "labelloop.full_seq"   # labels-store seq of the last full retrain behind a version
RULE_TAG = "labelloop.train_rule"
_classifiers: dict[tuple[str, str], Any] = {}


def classifier_for(settings: Settings, version: str):
    """The Classifier of a registered version, loaded once per process (steps share a process)."""
    from labelloop import registry
    from labelloop.modeling import Classifier

    key = (settings.registry.model_name, str(version))
    if key not in _classifiers:
        _classifiers[key] = Classifier(registry.fetch_bundle(settings, version),
                                       device=settings.training.device, version=str(version))
    return _classifiers[key]


# -- human labels ------------------------------------------------------------------------------
def is_holdout(text: str, fraction: float) -> bool:
    return fraction > 0 and text_bucket("holdout:" + text) < fraction


def human_split(human: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trainable, held out) human labels; the same text is always on the same side."""
    if human.empty:
        return human, human
    held = human["text"].map(lambda t: is_holdout(t, fraction))
    return human[~held].reset_index(drop=True), human[held].reset_index(drop=True)


def human_labels(settings: Settings, max_seq: Optional[int] = None) -> pd.DataFrame:
    """Active human labels, one per text (the latest wins), with the seq they were written at."""
    from labelloop import labels_store

    with labels_store.open_store(settings) as store:
        df = store.rows(status=labels_store.ACTIVE)
    columns = ["text", "label", "seq", "changed", "model_version"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    if max_seq is not None:
        df = df[df["seq"] <= int(max_seq)]
    df = df[df["kind"] == labels_store.LABEL]  # a classification label, no generation answer
    df = df.sort_values(["updated_ts", "seq"]).drop_duplicates("text", keep="last")
    return df[columns].reset_index(drop=True)


def human_digest(rows: pd.DataFrame) -> str:
    """Digest of the human labels a retrain would use (order-free): equal means same data."""
    return data.human_digest(rows)


# -- the training rule -------------------------------------------------------------------------
def choose_rule(settings: Settings, champion: Optional[dict], human_seq: int) -> tuple[str, str]:
    """(rule, why): `warm` or `full` from `feedback.train_rule` and the champion's history."""
    cfg = settings.feedback
    if cfg.train_rule == "warm":
        if champion is None:
            raise ConfigError("feedback.train_rule is warm but there is no champion to continue "
                             "from: train one first (`labelloop train`) or use auto/full")
        return "warm", "feedback.train_rule is warm"
    if cfg.train_rule == "full":
        return "full", "feedback.train_rule is full"
    if champion is None:
        return "full", "no champion to continue from"
    since_full = human_seq - int(champion.get("full_seq") or 0)
    if since_full >= cfg.full_retrain_labels:
        return "full", (f"{since_full} label writes since the last full retrain "
                        f"(feedback.full_retrain_labels {cfg.full_retrain_labels})")
    return "warm", (f"{since_full} label writes since the last full retrain < "
                    f"feedback.full_retrain_labels {cfg.full_retrain_labels}")


def preflight(settings: Settings) -> None:
    """Before a turn does any work: the data and base model load, and a warm start (rule warm,
    or auto with a champion) is possible from the champion; one clear error otherwise."""
    from labelloop import registry, training
    from labelloop.tasks import task_from_settings

    if settings.task.type == "generation":
        from labelloop.generation import feedback as generation

        return generation.preflight(settings)
    data.load_splits(settings.dataset, task_from_settings(settings))
    if settings.feedback.train_rule == "full":
        return
    champion = registry.get_champion(settings)
    if champion is None:
        choose_rule(settings, None, 0)  # raises for rule warm
        return
    training.check_warm_start(registry.fetch_bundle(settings, champion.version),
                              task_from_settings(settings))


def warm_training_settings(settings: Settings) -> TrainingSettings:
    w = settings.feedback.warm_start
    return settings.training.model_copy(update={
        "method": w.method, "epochs": w.epochs, "learning_rate": w.learning_rate,
        "batch_size": w.batch_size, "max_steps": None,
        # its own measured schedule (`epochs` over new labels + replay), not the small-data floor
        "min_steps": 0})


def training_rows(settings: Settings, rule: str, base_train: pd.DataFrame, test: pd.DataFrame,
                  trainable: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """The rows a challenger trains on.

    full: base rows plus every trainable human label (humans win for the same text).
    warm: each new human label `new_label_repeats` times, plus a stable replay sample of the
    rest (base rows and earlier human labels) so the champion does not forget what it knew:
    `replay_rows`, or `replay_per_new_label` per new label where that is more (on the H200, 1,000
    corrections x 4 against 256 replayed rows took test macro-F1 from 0.80 to 0.56).
    """
    from labelloop.cleaning import Cleaning

    cleaning = Cleaning.from_settings(settings.dataset.cleaning)
    everything = data.merge_human_labels(base_train, trainable, test, cleaning)
    if rule == "full":
        return everything
    w = settings.feedback.warm_start
    new = data.merge_human_labels(pd.DataFrame(columns=["text", "label"]),
                                  new[["text", "label"]], test, cleaning) if not new.empty else new
    rest = everything[~everything["text"].isin(set(new["text"]))] if not new.empty else everything
    order = rest["text"].map(lambda t: text_bucket("replay:" + t)).sort_values().index
    n_replay = max(w.replay_rows, int(w.replay_per_new_label * len(new)))
    replay = rest.loc[order[:n_replay]]
    cols = ["text", "label"]
    if data.WEIGHT in everything.columns:  # dataset.weight_column: replay keeps its weights,
        cols.append(data.WEIGHT)           # a new human label weighs 1
        new = new.assign(**{data.WEIGHT: 1.0})
    parts = [new[cols]] * w.new_label_repeats + [replay[cols]]
    rows = pd.concat(parts, ignore_index=True)
    if rows.empty:
        raise ValueError("a warm start needs new human labels or replay rows; there are none")
    return rows


def train(settings: Settings, rule: str, rows: pd.DataFrame, champion_bundle: Optional[Path],
          on_log=None):
    from labelloop import training
    from labelloop.tasks import task_from_settings

    task = task_from_settings(settings)
    if rule == "warm":
        return training.fine_tune(rows, task, settings.model, warm_training_settings(settings),
                                  on_log=on_log, init_bundle=champion_bundle)
    from labelloop import distributed  # a full retrain spreads over training.num_processes

    return distributed.fine_tune(rows, task, settings.model, settings.training, on_log=on_log)


# -- scoring -----------------------------------------------------------------------------------
def label_ids(classifier, texts: list[str], batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=np.int64)
    logits = classifier.logits(texts, batch_size)
    return logits.argmax(axis=1).astype(np.int64)


def _cache_path(settings: Settings, version: str, test_digest: str) -> Path:
    return (settings.data_path / "cache" / "test-predictions"
            / f"{settings.registry.model_name}-v{version}-{test_digest}.json")


def store_test_predictions(settings: Settings, version: str, test_digest: str,
                           ids: np.ndarray) -> Path:
    path = _cache_path(settings, version, test_digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"test_digest": test_digest, "predicted": ids.tolist()}))
    tmp.replace(path)
    return path


def cached_test_predictions(settings: Settings, version: str, test_digest: str,
                            n: int) -> Optional[np.ndarray]:
    """The label ids stored for `version` on the test split with this digest, or None."""
    path = _cache_path(settings, version, test_digest)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("test_digest") == test_digest and len(cached["predicted"]) == n:
                return np.asarray(cached["predicted"], dtype=np.int64)
        except (ValueError, KeyError):
            pass
    return None


def test_predictions(settings: Settings, version: str, test: pd.DataFrame) -> np.ndarray:
    """Label ids version `version` predicts on the frozen test split (cached per test digest)."""
    test_digest = data.digest(test)
    cached = cached_test_predictions(settings, version, test_digest, len(test))
    if cached is not None:
        return cached
    ids = label_ids(classifier_for(settings, version), list(test["text"]),
                    settings.evaluation.batch_size)
    store_test_predictions(settings, version, test_digest, ids)
    return ids


def accuracy_pair(champion, challenger, rows: pd.DataFrame, batch_size: int) -> dict[str, Any]:
    """{"n", "champion", "challenger"}: both models' accuracy on labelled rows, and
    "champion_only" / "challenger_only": how many rows only that one gets right (what the
    promotion's sign test weighs)."""
    if rows.empty:
        return {"n": 0}
    task = champion.task
    refs = np.array([task.encode_label(lab) for lab in rows["label"]])
    texts = list(rows["text"])
    champ_right = label_ids(champion, texts, batch_size) == refs
    chal_right = label_ids(challenger, texts, batch_size) == refs
    return {"n": int(len(rows)), "champion": float(champ_right.mean()),
            "challenger": float(chal_right.mean()),
            "champion_only": int((champ_right & ~chal_right).sum()),
            "challenger_only": int((chal_right & ~champ_right).sum())}


def judge(settings: Settings, challenger_version: str, challenger_ids: np.ndarray,
          challenger_clf, test: pd.DataFrame, champion_version: Optional[str],
          heldout: pd.DataFrame, corrections: pd.DataFrame) -> promotion.PromotionDecision:
    """The promotion decision for a challenger whose test predictions are `challenger_ids`."""
    from labelloop.tasks import task_from_settings

    task = task_from_settings(settings)
    p = settings.promotion
    refs = np.array([task.encode_label(lab) for lab in test["label"]])
    n = len(task.labels)
    chal_score = promotion.score(refs, challenger_ids, n, p.metric)
    if champion_version is None or str(champion_version) == str(challenger_version):
        return promotion.decide(p.metric, challenger_version, chal_score,
                                None if champion_version is None else str(champion_version),
                                None, p.margin)
    champ_ids = test_predictions(settings, str(champion_version), test)
    champ_score = promotion.score(refs, champ_ids, n, p.metric)
    if p.rule == "margin":
        return promotion.decide(p.metric, challenger_version, chal_score, str(champion_version),
                                champ_score, p.margin)
    _, low, high = promotion.paired_bootstrap(refs, champ_ids, challenger_ids, n, p.metric,
                                              p.resamples, p.confidence, seed=settings.training.seed)
    # the bound over turns matters only where corrections speak for the challenger
    best = None if corrections.empty else best_promoted(settings, test, refs, n, challenger_version)
    bs = settings.evaluation.batch_size
    human = {"heldout": {"n": 0}, "corrections": {"n": 0}}
    if not (heldout.empty and corrections.empty):
        champ_clf = classifier_for(settings, str(champion_version))
        human = {"heldout": accuracy_pair(champ_clf, challenger_clf, heldout, bs),
                 "corrections": accuracy_pair(champ_clf, challenger_clf, corrections, bs)}
    return promotion.decide_paired(
        p.metric, challenger_version, str(champion_version), chal_score, champ_score,
        (low, high), p.margin, p.confidence, **human, max_loss=p.max_loss, best=best)


def best_promoted(settings: Settings, test: pd.DataFrame, refs: np.ndarray, n_labels: int,
                  challenger_version: str) -> Optional[tuple[str, float]]:
    """(version, score) of the best version promoted earlier on this test split: those with
    predictions stored for it (each version registered while it was in use has them, so a new
    test split starts a new history and no old model is loaded)."""
    from labelloop import registry

    test_digest = data.digest(test)

    def score_of(version: str) -> Optional[float]:
        ids = cached_test_predictions(settings, version, test_digest, len(test))
        return None if ids is None else promotion.score(refs, ids, n_labels,
                                                         settings.promotion.metric)

    return registry.best_promoted(settings, score_of, exclude=challenger_version)
