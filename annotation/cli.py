"""`labelloop annotate setup|import|sync`.

setup   create/update the Label Studio project, register the webhook, connect the ML backend
        (when the service answers)
import  import `studio.pool_size` texts of the unlabelled pool (`pool.source`, or `--file F`)
        with the champion's predictions, most informative first (annotation/pool.py), into
        every tool that is on (Argilla: `argilla.pool_size` records)
sync    pull all annotations into the labels store, log model/annotator agreement to MLflow
"""

from __future__ import annotations

import json
import sys

import labelloop  # noqa: F401
from labelloop.settings import load_settings


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def import_all(settings, file=None) -> dict:
    """The same pool into every annotation tool that is on (`annotation.tools`): Label Studio
    tasks, Argilla records. One tool: its report; several: a report per tool. Each import's
    pool line (where the texts came from, what was skipped) goes to stderr."""
    from annotation.tools import is_enabled

    reports = {}
    if is_enabled(settings, "label-studio"):
        from annotation.labelstudio import import_pool

        reports["label-studio"] = import_pool(settings, file=file)
    if is_enabled(settings, "argilla"):
        from annotation.argilla import log_pool

        reports["argilla"] = log_pool(settings, file=file)
    from annotation.pool import summary

    for tool, report in reports.items():
        line = summary(report)
        if line:  # for people, on stderr; the JSON report stays on stdout
            print(f"{tool}: {line}", file=sys.stderr)
    return next(iter(reports.values())) if len(reports) == 1 else reports


def main(args) -> int:
    from annotation.argilla import ArgillaConnectionError, DatasetMismatch
    from annotation.config import LabelConfigError
    from annotation.labelstudio import StudioConnectionError
    from annotation.sync import ExportError
    from labelloop.errors import USER_ERRORS

    settings = load_settings(getattr(args, "config", None))
    action = args.action
    try:
        if action == "setup":
            from annotation.labelstudio import setup

            _print(setup(settings, progress=lambda m: print(m, file=sys.stderr)))
            return 0
        if action == "import":
            _print(import_all(settings, getattr(args, "file", None)))
            return 0
        if action == "sync":
            from annotation.agreement import log_agreement
            from annotation.sync import sync_projects

            report = sync_projects(settings)
            report["agreement"] = log_agreement(settings)["versions"]
            _print(report)
            return 0
    except (StudioConnectionError, LabelConfigError, ExportError, ArgillaConnectionError,
            DatasetMismatch, *USER_ERRORS) as exc:
        print(f"labelloop annotate {action}: error: {exc}", file=sys.stderr)
        return 2
    raise SystemExit(f"unknown action {action!r}")
