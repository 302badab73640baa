"""labelloop/quiet.py: library chatter is dropped, real warnings are kept."""

from __future__ import annotations

import logging

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
