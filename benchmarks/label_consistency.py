"""How often nearly the same text carries the same label: a floor under the label noise.

For each test text of the frozen split, the training text closest by TF-IDF cosine (the
baseline's word 1-2 grams). Where that neighbour is a near copy (a retweet, the same news
twice), a label that means the text should be the same; how often it is shows how consistently
the annotators labelled, without any model. A model that answers the same for the same words
cannot agree with both labels of a disagreeing pair.

    python benchmarks/label_consistency.py                   # the configured dataset
    python benchmarks/label_consistency.py --config my.yaml --thresholds 0.8 0.9 0.95

Runs on a CPU in seconds (docs/benchmarks.md, sixteenth session).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labelloop  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from labelloop import baseline, data  # noqa: E402
from labelloop.settings import load_settings  # noqa: E402
from labelloop.tasks import task_from_settings  # noqa: E402


def nearest_neighbours(train_texts, test_texts) -> tuple[np.ndarray, np.ndarray]:
    """Per test text: the index of the closest training text and their cosine (TF-IDF)."""
    vec = baseline.vectorizer(len(train_texts))
    train_vectors = vec.fit_transform(train_texts)
    similarity = vec.transform(test_texts) @ train_vectors.T
    return (np.asarray(similarity.argmax(axis=1)).ravel(),
            similarity.max(axis=1).toarray().ravel())


def agreement_of_near_copies(train: pd.DataFrame, test: pd.DataFrame,
                             thresholds) -> list[dict]:
    """Per cosine threshold: how many test texts have a training neighbour at least that
    close, and the share of those whose neighbour carries the same label."""
    nearest, cosine = nearest_neighbours(list(train["text"]), list(test["text"]))
    same = train["label"].to_numpy()[nearest] == test["label"].to_numpy()
    rows = []
    for t in thresholds:
        close = cosine >= t
        rows.append({"cosine_at_least": t, "test_texts": int(close.sum()),
                     "share_of_test": float(close.mean()),
                     "same_label": float(same[close].mean()) if close.any() else None})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="labelloop settings YAML (default: built-in defaults)")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95])
    args = ap.parse_args()
    settings = load_settings(args.config)
    train, test = data.split(data.load_labelled(settings.dataset, task_from_settings(settings)),
                             settings.dataset.test_fraction)
    print(f"{len(train)} training / {len(test)} test texts (test digest {data.digest(test)})")
    print(f"{'cosine >=':>10}{'test texts':>12}{'share':>8}{'same label':>12}")
    for row in agreement_of_near_copies(train, test, args.thresholds):
        same = "-" if row["same_label"] is None else f"{row['same_label']:.3f}"
        print(f"{row['cosine_at_least']:>10}{row['test_texts']:>12}{row['share_of_test']:>8.3f}{same:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
