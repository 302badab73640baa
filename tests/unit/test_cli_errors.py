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


HEAVY_PROBE = """
import sys
from labelloop import cli
code = cli.main([sys.argv[1]])
print(code, sorted(m for m in ("torch", "transformers", "mlflow", "zenml", "peft")
                   if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["train", "feedback"])
def test_a_config_error_is_named_before_torch_mlflow_or_zenml_load(command, tmp_path):
    """Regression: a misspelt key took 10-13 s to report (the CLI imported the pipelines, torch,
    transformers, peft, MLflow and ZenML first, and the error types lived beside torch and
    MLflow); now the settings are read first and the error types are light."""
    import os
    import subprocess

    env = {**os.environ, "LABELLOOP__TRAINING__EPOHCS": "1",
           "LABELLOOP__DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-c", HEAVY_PROBE, command], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "2 []", r.stdout + r.stderr[-2000:]
    assert f"labelloop {command}: error:" in r.stderr and "unknown key 'training.epohcs'" in r.stderr
