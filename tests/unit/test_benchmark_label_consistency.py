"""benchmarks/label_consistency.py: near copies across the split, and whether their labels agree."""

from __future__ import annotations

import pandas as pd

from benchmarks import label_consistency as bench


def test_near_copies_and_their_labels():
    train = pd.DataFrame({"text": ["the flight was late again", "lovely crew and a smooth flight",
                                   "what time does the game start"],
                          "label": ["negative", "positive", "neutral"]})
    test = pd.DataFrame({"text": ["the flight was late again!", "lovely crew and a smooth flight",
                                  "an unrelated sentence entirely"],
                         "label": ["negative", "neutral", "neutral"]})
    nearest, cosine = bench.nearest_neighbours(list(train["text"]), list(test["text"]))
    assert nearest[:2].tolist() == [0, 1]
    assert cosine[0] > 0.99 and cosine[2] == 0.0
    rows = bench.agreement_of_near_copies(train, test, [0.9, 1.01])
    # two near copies; the second's label differs from its copy's
    assert rows[0] == {"cosine_at_least": 0.9, "test_texts": 2, "share_of_test": 2 / 3,
                       "same_label": 0.5}
    assert rows[1]["test_texts"] == 0 and rows[1]["same_label"] is None
