import pytest

from labelloop.evaluation import compute_metrics
from labelloop.tasks import ClassificationTask

TASK = ClassificationTask(name="t", labels=("a", "b", "c"))


def test_local_metric_modules_match_hand_computed_values():
    refs = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 0, 2]
    m = compute_metrics(refs, preds, TASK)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class a: p=1/2 r=1/2 f=.5 ; b: p=2/3 r=1 f=.8 ; c: p=1 r=1/2 f=2/3
    assert m["per_class_f1"] == pytest.approx([0.5, 0.8, 2 / 3])
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_missing_class_counts_in_macro_average():
    m = compute_metrics([0, 0], [0, 0], TASK)
    assert m["per_class_support"] == [2, 0, 0]
    assert m["macro_f1"] == pytest.approx(1 / 3)
