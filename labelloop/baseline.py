"""The baseline every training run is measured against: TF-IDF + logistic regression.

Fitted on the same training rows and scored on the same test split as the fine-tuned model, in
the same run, with the same class weighting (`training.class_weights`), so "the model beats the
baseline" means it beats the simplest strong text classifier on equal terms. A fine-tune that
collapsed to the majority class on a few hundred rows shows up here, not in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from labelloop import promotion
from labelloop.tasks import ClassificationTask

NAME = "tfidf+logreg"


@dataclass
class BaselineResult:
    metrics: dict[str, float]  # accuracy, macro_f1 on the test split
    predicted: np.ndarray      # label ids per test text, in test order
    fit_seconds: float
    name: str = NAME
    # per test text, the probability of each label (rows x labels, in task.labels order); a
    # baseline that could not fit puts all of it on the label it predicts
    probabilities: Optional[np.ndarray] = None


def vectorizer(train_rows: int):
    """The baseline's TF-IDF features, unfitted: word 1-2 grams seen twice or more (on a few
    hundred rows, once: else little is left)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2 if train_rows >= 2000 else 1,
                           sublinear_tf=True)


def fit_and_score(train: pd.DataFrame, test: pd.DataFrame, task: ClassificationTask,
                  weights: Optional[dict[str, float]] = None) -> BaselineResult:
    """Fit on `train` (text, label), score on `test`. `weights`: per-label loss weights, as
    labelloop.training.class_weights returns them (None: unweighted). Rows with a `weight`
    column (dataset.weight_column) are weighted by it too, as the fine-tune weights them."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    y = np.array([task.encode_label(lab) for lab in train["label"]])
    vec = vectorizer(len(train))
    class_weight = None if weights is None else {
        task.encode_label(lab): w for lab, w in weights.items()}
    try:
        if len(set(y)) < 2:
            raise ValueError("one label only")
        x = vec.fit_transform(train["text"])
        clf = LogisticRegression(C=4.0, max_iter=1000, tol=1e-3, class_weight=class_weight)
        sample_weight = train["weight"].to_numpy(dtype=float) if "weight" in train else None
        clf.fit(x, y, sample_weight=sample_weight)
        x_test = vec.transform(test["text"])
        pred = clf.predict(x_test)
        probs = np.zeros((len(test), len(task.labels)))
        probs[:, clf.classes_] = clf.predict_proba(x_test)  # a label absent from train: 0
    except ValueError:  # one label, or no word to learn from: the most frequent label
        pred = np.full(len(test), np.bincount(y).argmax() if len(y) else 0)
        probs = np.eye(len(task.labels))[pred]
    fit_s = time.perf_counter() - start
    refs = np.array([task.encode_label(lab) for lab in test["label"]])
    n = len(task.labels)
    metrics = {"accuracy": promotion.score(refs, pred, n, "accuracy"),
               "macro_f1": promotion.score(refs, pred, n, "macro_f1")}
    return BaselineResult(metrics=metrics, predicted=np.asarray(pred, dtype=np.int64),
                          fit_seconds=fit_s, probabilities=probs)
