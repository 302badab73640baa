"""Library chatter off, at its source, so labelloop's own progress and results stand out.

Installed by `import labelloop`, before the libraries are imported (a logger's level and
filters can be set before its module exists). Each switch names what it silences; real warnings
and errors of these libraries still show.

- httpx logs one `HTTP Request: GET ...` line at INFO per call (every Label Studio SDK call);
- ZenML's pipeline start lists the user, the stack and each component, says caching is off and
  advertises its dashboard and ZenML Pro, all at INFO (step start/finish lines stay);
- ZenML's MLflow tracker warns, after every step, that it could not switch off MLflow
  autologging for fastai, which is not installed (the project never turns autologging on);
- transformers prints a LOAD REPORT table when a new classification head is initialised: the
  expected case for a base encoder, as is the base checkpoint's pretraining head left unused
  (MPNet's and RoBERTa's pooler, a masked-LM head); a report with other keys or statuses still
  shows;
- peft calls a transformers method deprecated in v6 (a FutureWarning nobody here can act on);
- TRL's SFTConfig passes transformers' own deprecated `gradient_checkpointing` default;
- the Argilla SDK logs every API call and every resource it creates at INFO, whole (`Webhook:
  Resource created: Webhook(... secret='...')` put the webhook's signing secret on the demo's
  terminal), and its client says "Logged in as ..." on the root logger at every connection;
- ZenML's local orchestrator logs a step stopped from outside (SIGTERM, or SIGINT to a process
  started in the background) with the step's whole traceback (the lines "Failed to run step
  fine_tune: The execution was interrupted." and "Step fine_tune failed." stay);
- rouge_score (the generation evaluation's ROUGE-L) says "Using default tokenizer." at INFO
  through absl's logger each time it is built;
- matplotlib says "generated new fontManager" at INFO the first time a machine plots (the
  evaluation's confusion matrix), in the middle of a fresh machine's first training run.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings

QUIET_LOGGERS = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "zenml.pipelines.pipeline_definition": logging.WARNING,
    "zenml.orchestrators.step_run_utils": logging.WARNING,
    "argilla.sdk": logging.WARNING,
    "matplotlib.font_manager": logging.WARNING,
    "absl": logging.WARNING,
}

_HEAD_KEY = re.compile(r"^(classifier|score|pre_classifier|classification_head)\.")
# What a base checkpoint brings that a sequence classifier does not use: the pooler of
# architectures whose head reads the first token itself (MPNet, RoBERTa), a pretraining head.
_UNUSED_BASE_KEY = re.compile(r"^((\w+\.)?pooler|lm_head|cls|mask_predictions|lm_predictions)\.")
_REPORT_ROW = re.compile(r"^\s*(\S+)\s*\|\s*([A-Z_]+)\s*\|")
# transformers colours the report's statuses when its stream is a terminal (`\x1b[31mMISSING\x1b[0m`)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_new_head_report(message: str) -> bool:
    """A transformers LOAD REPORT listing only MISSING classification-head keys and, maybe,
    UNEXPECTED keys of the base's own pretraining head."""
    if "LOAD REPORT" not in message:
        return False
    message = _ANSI.sub("", message)
    rows = [m.groups() for m in map(_REPORT_ROW.match, message.splitlines()) if m]
    rows = [(key, status) for key, status in rows if key != "Key"]  # the table's header
    expected = {"MISSING": _HEAD_KEY, "UNEXPECTED": _UNUSED_BASE_KEY}
    return any(status == "MISSING" for _, status in rows) and all(
        status in expected and expected[status].match(key) for key, status in rows)


def is_autolog_noise(message: str) -> bool:
    """ZenML's "Failed to disable MLflow autologging for ... ['fastai']" where every framework
    named is not even installed (nothing was autologging)."""
    if not message.startswith("Failed to disable MLflow autologging"):
        return False
    names = re.findall(r"'([A-Za-z0-9_]+)'", message)
    return bool(names) and all(importlib.util.find_spec(name) is None for name in names)


def is_zenml_archive_note(message: str) -> bool:
    """ZenML's "Model version 4 has been set to archived." when a promotion moves its model
    stage: ZenML's own version count, not the registry's, printed beside "registered ...
    version 1" it misleads; the promotion line says what happened."""
    return re.fullmatch(r"Model version \S+ has been set to archived\.", message) is not None


def is_argilla_login(message: str) -> bool:
    """The Argilla client's "Argilla: Logged in as NAME with the role ROLE", logged on the root
    logger (not its own) at every connection."""
    return message.startswith("Argilla: Logged in as ")


# Exceptions that mean "stopped from outside" (a signal, a stop from the dashboard), not
# a fault in the step: ZenML's local orchestrator logs each with the step runner's whole traceback.
_STOPS = ("KeyboardInterrupt", "RunInterruptedException", "RunStoppedException")


def is_stop(exc_info) -> bool:
    return bool(exc_info) and exc_info[0] is not None and exc_info[0].__name__ in _STOPS


class _NoTracebackForStops(logging.Filter):
    """Keeps the record ("Step fine_tune failed."), drops its traceback when the "failure" was
    an interruption: forty lines of ZenML's and torch's frames for a `kill`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_stop(record.exc_info):
            record.exc_info, record.exc_text = None, None
        return True


class _DropIf(logging.Filter):
    def __init__(self, predicate):
        super().__init__()
        self.predicate = predicate

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.predicate(record.getMessage())
        except Exception:  # noqa: BLE001 - a filter must never lose a record by failing
            return True


def install() -> None:
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("transformers.modeling_utils").addFilter(_DropIf(is_new_head_report))
    logging.getLogger(
        "zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker"
    ).addFilter(_DropIf(is_autolog_noise))
    logging.getLogger("zenml.zen_stores.sql_zen_store").addFilter(_DropIf(is_zenml_archive_note))
    logging.getLogger("zenml.orchestrators.local.local_orchestrator").addFilter(
        _NoTracebackForStops())
    logging.getLogger().addFilter(_DropIf(is_argilla_login))  # a root logger record only
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                            category=FutureWarning)
    # transformers' TrainingArguments (under TRL's SFTConfig) warns about its own default.
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing` is deprecated",
                            category=FutureWarning)
    # TRL's DPOTrainer toggles checkpointing through the old names on every step.
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_(en|dis)able` is deprecated",
                            category=FutureWarning)
