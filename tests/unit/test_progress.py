"""labelloop/progress.py: a live bar in a terminal, whole lines in a log."""

from __future__ import annotations

import io

import pandas as pd

from labelloop.progress import LineProgress, step_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_progress_writes_a_line_per_tenth_and_a_last_one():
    out = io.StringIO()
    bar = LineProgress(200, "fine-tune (full, cpu)", out)
    for step in range(200):
        bar.set_postfix(loss=f"{1.0 / (step + 1):.4f}")
        bar.update(1)
    bar.close()
    bar.close()  # twice is once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 11, lines
    # a line at the start: a log shows the fine-tune began (a test waits for it, and people do)
    assert lines[0] == "fine-tune (full, cpu): 0/200 steps (0%)"
    assert lines[1].startswith("fine-tune (full, cpu): 20/200 steps (10%)")
    assert "loss=0.0500" in lines[1]
    assert lines[-1].startswith("fine-tune (full, cpu): 200/200 steps (100%) in ")
    assert lines[-1].endswith("loss=0.0050") and "step/s" in lines[-1]


def test_line_progress_with_fewer_steps_than_lines_and_jumps():
    out = io.StringIO()
    bar = LineProgress(3, "DPO (lora, cpu)", out)
    bar.update(2)  # the HF callback updates by the difference since its last call
    bar.update(1)
    bar.close()
    assert [line.split(" steps")[0] for line in out.getvalue().splitlines()] == [
        "DPO (lora, cpu): 0/3", "DPO (lora, cpu): 2/3", "DPO (lora, cpu): 3/3"]


def test_line_progress_also_writes_when_a_tenth_takes_long():
    """A long run (the full default on a CPU takes hours) is not silent between tenths."""
    out = io.StringIO()
    bar = LineProgress(100_000, "fine-tune (lora, cpu)", out, every_seconds=0.0)
    bar.update(1)
    bar.update(1)
    assert [line.split(" steps")[0] for line in out.getvalue().splitlines()] == [
        "fine-tune (lora, cpu): 0/100000", "fine-tune (lora, cpu): 1/100000",
        "fine-tune (lora, cpu): 2/100000"]
    quiet = io.StringIO()
    bar = LineProgress(100_000, "x", quiet)  # the default: a line a minute
    bar.update(5)
    assert len(quiet.getvalue().splitlines()) == 1


def test_step_bar_is_tqdm_in_a_terminal_lines_elsewhere_and_silent_when_off():
    from tqdm.auto import tqdm

    assert isinstance(step_bar(10, "x", stream=_Terminal()), tqdm)
    assert isinstance(step_bar(10, "x", stream=io.StringIO()), LineProgress)
    quiet = io.StringIO()
    off = step_bar(10, "x", enabled=False, stream=quiet)
    off.update(10)
    off.close()
    assert quiet.getvalue() == ""


def test_fine_tune_progress_in_a_log_is_lines_not_carriage_returns(tiny_base, one_thread, capsys):
    """Regression: the classifier's fine-tune wrote tqdm's carriage-return redraws to a log (a
    pipe, CI, `kubectl logs`), one line of thousands of characters."""
    from labelloop import training
    from labelloop.settings import Settings, TrainingSettings
    from labelloop.tasks import ClassificationTask

    task = ClassificationTask("s", ("negative", "positive"))
    train = pd.DataFrame({"text": [f"text {i}" for i in range(40)],
                          "label": ["negative", "positive"] * 20})
    cfg = TrainingSettings(method="full", learning_rate=1e-3, max_steps=20, batch_size=8,
                           device="cpu", log_every_steps=5)
    training.fine_tune(train, task, Settings().model.model_copy(
        update={"base": tiny_base, "max_length": 16}), cfg, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("fine-tune (full, cpu): ")]
    assert len(lines) == 11, err[-2000:]
    assert lines[-1].startswith("fine-tune (full, cpu): 20/20 steps (100%) in ") \
        and "loss=" in lines[-1]


def test_slow_steps_read_as_seconds_per_step(monkeypatch):
    import labelloop.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = LineProgress(4, "fine-tune (SFT, lora, cpu)", out)
    now[0] = 33.0
    bar.update(1)
    now[0] = 130.0
    bar.update(3)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[1] == "fine-tune (SFT, lora, cpu): 1/4 steps (25%), 33.0 s/step", lines
    assert lines[-1].endswith("in 130.0s, 32.5 s/step"), lines
