"""labelloop/quiet.py: library chatter is dropped, real warnings are kept."""

from __future__ import annotations

import logging

import pytest

from labelloop import quiet

NEW_HEAD = """BertForSequenceClassification LOAD REPORT from: /x/model
Key               | Status  | 
------------------+---------+-
classifier.weight | MISSING | 
classifier.bias   | MISSING | 

Notes:
- MISSING:\tthose params were newly initialized because missing from the checkpoint."""


def test_new_head_report_is_dropped_other_reports_kept():
    assert quiet.is_new_head_report(NEW_HEAD)
    assert not quiet.is_new_head_report(NEW_HEAD.replace("classifier.bias   | MISSING",
                                                         "bert.pooler.dense | MISSING"))
    assert not quiet.is_new_head_report(NEW_HEAD.replace("classifier.bias   | MISSING",
                                                         "classifier.bias   | UNEXPECTED"))
    assert not quiet.is_new_head_report("some other warning")


# transformers 5 loading all-mpnet-base-v2 (a sentence-transformers base saved with its pooler)
# into MPNetForSequenceClassification, whose head reads the first token itself.
MPNET_HEAD = """\x1b[1mMPNetForSequenceClassification LOAD REPORT\x1b[0m from: /x/mpnet
Key                        | Status     | 
---------------------------+------------+-
pooler.dense.weight        | UNEXPECTED | 
pooler.dense.bias          | UNEXPECTED | 
classifier.dense.bias      | MISSING    | 
classifier.dense.weight    | MISSING    | 
classifier.out_proj.bias   | MISSING    | 
classifier.out_proj.weight | MISSING    | 

Notes:
- UNEXPECTED:\tcan be ignored when loading from different task/architecture; not ok if you expect identical arch.
- MISSING:\tthose params were newly initialized because missing from the checkpoint."""


def test_new_head_report_with_the_bases_unused_pooler_is_dropped():
    assert quiet.is_new_head_report(MPNET_HEAD)
    # a real problem in the same table still shows: an encoder weight missing, or only
    # unexpected keys (no new head: the checkpoint does not fit the architecture)
    assert not quiet.is_new_head_report(MPNET_HEAD.replace(
        "classifier.dense.bias      | MISSING", "encoder.layer.0.attn.q  | MISSING"))
    assert not quiet.is_new_head_report(MPNET_HEAD.replace(
        "pooler.dense.bias          | UNEXPECTED", "encoder.layer.0.attn.q  | UNEXPECTED"))
    only_unexpected = "\n".join(line for line in MPNET_HEAD.splitlines()
                                 if "| MISSING" not in line)
    assert not quiet.is_new_head_report(only_unexpected)


def test_autolog_noise_only_for_frameworks_not_installed():
    assert quiet.is_autolog_noise("Failed to disable MLflow autologging for the following "
                                  "frameworks: ['fastai_not_installed_here'].")
    # pytest is installed: a failure for an installed framework is a real warning
    assert not quiet.is_autolog_noise("Failed to disable MLflow autologging for the following "
                                      "frameworks: ['pytest'].")
    assert not quiet.is_autolog_noise("Failed to connect")


def test_installed_filters_act_on_the_library_loggers(caplog):
    import labelloop  # noqa: F401  (installs them)

    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    log = logging.getLogger("transformers.modeling_utils")
    with caplog.at_level(logging.WARNING, logger="transformers.modeling_utils"):
        log.warning(NEW_HEAD)
        log.warning("Some weights of the checkpoint were not used")
    assert [r.getMessage() for r in caplog.records] == ["Some weights of the checkpoint were not used"]


def test_zenml_archive_note_is_dropped_other_store_messages_kept(caplog):
    import labelloop  # noqa: F401  (installs the filters)

    assert quiet.is_zenml_archive_note("Model version 4 has been set to archived.")
    assert not quiet.is_zenml_archive_note("Model version 4 is in production, but `force` ...")
    log = logging.getLogger("zenml.zen_stores.sql_zen_store")
    with caplog.at_level(logging.INFO, logger="zenml.zen_stores.sql_zen_store"):
        log.info("Model version 12 has been set to archived.")
        log.info("Creating database tables")
    assert [r.getMessage() for r in caplog.records] == ["Creating database tables"]


def test_argilla_sdk_chatter_is_dropped_its_warnings_kept():
    """The Argilla SDK logs each resource it creates at INFO, whole: a webhook's signing secret
    reached the demo's terminal through the root handler ZenML installs at INFO."""
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(level=logging.INFO); import labelloop; "
            "from argilla._helpers._log import log_message; "
            "log_message(\"Webhook: Resource created: Webhook(secret='s3cret')\"); "
            "log_message('DatasetsAPI: could not publish', 'warning'); "
            "logging.info('Argilla: Logged in as labelloop with the role Role.owner'); "
            "logging.info('a root message of another kind')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stderr
    assert "s3cret" not in err and "Logged in as" not in err
    assert "could not publish" in err and "a root message of another kind" in err


@pytest.mark.parametrize("name", ["matplotlib.font_manager", "absl"])
def test_info_chatter_is_quiet_warnings_are_not(name):
    """matplotlib's "generated new fontManager" (INFO, the first plot on a machine) showed in
    the middle of a fresh machine's first `labelloop train`, between the evaluation's lines;
    rouge_score's "Using default tokenizer." (absl, INFO) twice in every generation
    evaluation."""
    import labelloop  # noqa: F401 - installs the switches

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as ZenML sets it for a pipeline run
    try:
        log = logging.getLogger(name)
        assert not log.isEnabledFor(logging.INFO)
        assert log.isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)


def test_new_head_report_in_a_terminal_with_colours_is_dropped_too():
    """Regression: in a terminal transformers colours the statuses, and the report showed in
    every `labelloop train` and `make demo` run there (a pipe or a log dropped it)."""
    coloured = NEW_HEAD.replace("| MISSING |", "| \x1b[31mMISSING\x1b[0m |").replace(
        "BertForSequenceClassification LOAD REPORT",
        "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m")
    assert "\x1b[31mMISSING" in coloured
    assert quiet.is_new_head_report(coloured)
    assert not quiet.is_new_head_report(coloured.replace(
        "classifier.bias   | \x1b[31mMISSING\x1b[0m", "bert.pooler.dense | \x1b[31mMISSING\x1b[0m"))
