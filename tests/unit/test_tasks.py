import numpy as np
import pytest

from labelloop.tasks import ClassificationTask, LabelError, task_from_dict

TASK = ClassificationTask(name="t", labels=("negative", "neutral", "positive"))


def test_predictions_from_logits():
    preds = TASK.predictions_from_logits(np.array([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]))
    assert [p.label for p in preds] == ["positive", "negative"]
    assert preds[0].score == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert sum(preds[0].probabilities.values()) == pytest.approx(1.0)
    assert set(preds[1].probabilities) == {"negative", "neutral", "positive"}


def test_row_from_answer():
    assert TASK.row_from_answer("hello", ["neutral"]) == {"text": "hello", "label": "neutral"}
    with pytest.raises(LabelError, match="not in the task's label set"):
        TASK.row_from_answer("hello", "joy")
    with pytest.raises(LabelError, match="exactly one choice"):
        TASK.row_from_answer("hello", ["neutral", "positive"])
    with pytest.raises(LabelError, match="empty"):
        TASK.row_from_answer("  ", "neutral")


def test_round_trip_through_dict():
    assert task_from_dict(TASK.to_dict()) == TASK
    with pytest.raises(ValueError, match="unknown task type"):
        task_from_dict({"type": "nope", "labels": ["a", "b"]})
