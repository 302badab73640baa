import threading
import time

from labelloop.prediction_log import PredictionLog, count_predictions, read_predictions
from labelloop.tasks import Prediction


def _pred(label="a", score=0.9):
    return Prediction(label=label, score=score, probabilities={"a": score, "b": 1 - score})


def test_records_are_written_and_read_back(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=100)
    assert log.record(["hello", "world"], [_pred(), {"label": "b", "score": 0.6,
                                                      "probabilities": {"a": 0.4, "b": 0.6}}],
                      model_version="3", source="classify") == 2
    assert log.flush()
    rows = read_predictions(tmp_path / "p.sqlite")
    assert [r.text for r in rows] == ["world", "hello"]  # newest first
    assert rows[0].label == "b" and rows[0].model_version == "3"
    assert rows[1].probabilities == {"a": 0.9, "b": pytest_approx(0.1)}
    log.close()


def pytest_approx(x):
    import pytest

    return pytest.approx(x)


def test_table_is_bounded(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=50)
    for i in range(20):
        log.record([f"t{i}-{j}" for j in range(10)], [_pred()] * 10, model_version="1")
    assert log.flush()
    log.close()
    assert count_predictions(tmp_path / "p.sqlite") == 50
    newest = read_predictions(tmp_path / "p.sqlite", limit=1)[0]
    assert newest.text == "t19-9"


def test_full_queue_drops_and_counts_without_blocking(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=1000, max_queued_rows=5,
                        flush_interval_s=60)
    assert log.record(["a"] * 5, [_pred()] * 5, "1") == 5
    t0 = time.perf_counter()
    assert log.record(["b"] * 3, [_pred()] * 3, "1") == 0
    assert time.perf_counter() - t0 < 0.05
    assert log.dropped == 3
    log.close()
    assert count_predictions(tmp_path / "p.sqlite") == 5


def test_concurrent_writers(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite", max_rows=10_000)

    def work(k):
        for i in range(50):
            log.record([f"{k}-{i}"], [_pred()], "1")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.flush()
    log.close()
    assert count_predictions(tmp_path / "p.sqlite") == 400
    assert log.dropped == 0


def test_disabled_log_records_nothing(tmp_path):
    log = PredictionLog(tmp_path / "p.sqlite", enabled=False)
    assert log.record(["a"], [_pred()], "1") == 0
    assert not (tmp_path / "p.sqlite").exists()
    log.close()
