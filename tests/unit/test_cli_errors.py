"""labelloop/cli.py: how a failed or stopped pipeline step ends the command."""

from __future__ import annotations

import logging
import sys

import pytest

from labelloop import cli, quiet


def _raising(exc: BaseException):
    def command(args):
        raise exc
    return command


def test_a_failed_step_ends_in_one_line_not_the_orchestrators_traceback(monkeypatch, capsys):
    """ZenML logs the step's own error and traceback, then raises "Pipeline run has failed due
    to failure in step(s): ..." from its orchestrator: that second traceback said nothing new."""
    monkeypatch.setattr(cli, "_cmd_train", _raising(RuntimeError(
        "Pipeline run has failed due to failure in step(s): fine_tune")))
    code = cli.main(["train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == ["labelloop train: error: step fine_tune failed (its error is above); the "
                   "steps that depend on it were skipped"]


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_train", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train"])
    assert cli.failed_steps(RuntimeError("Pipeline run has failed due to failure in step(s): "
                                         "sync_annotations, evaluate_fresh")) \
        == "sync_annotations, evaluate_fresh"
    assert cli.failed_steps(ValueError("Pipeline run has failed due to failure in step(s): x")) \
        is None


def test_interrupt_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_train", _raising(KeyboardInterrupt()))
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err.strip() == "labelloop train: interrupted"


class RunInterruptedException(Exception):
    """Named as ZenML's (zenml.exceptions): the filter goes by the name, not an import."""


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:  # noqa: BLE001
        info = sys.exc_info()
    return logging.LogRecord("zenml.orchestrators.local.local_orchestrator", logging.ERROR,
                             __file__, 1, "Step %s failed.", ("fine_tune",), info)


def test_a_stopped_step_is_logged_without_its_traceback_a_failed_one_with_it():
    import labelloop  # noqa: F401 - installs the filters

    log = logging.getLogger("zenml.orchestrators.local.local_orchestrator")
    stopped, failed = _record(RunInterruptedException("interrupted")), _record(ValueError("bad"))
    assert all(f.filter(stopped) for f in log.filters) and all(f.filter(failed) for f in log.filters)
    assert stopped.getMessage() == "Step fine_tune failed." and stopped.exc_info is None
    assert failed.exc_info is not None and failed.exc_info[0] is ValueError
    assert quiet.is_stop((KeyboardInterrupt, KeyboardInterrupt(), None))
    assert not quiet.is_stop(None)
