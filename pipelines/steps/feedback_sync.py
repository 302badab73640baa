"""Feedback step 1: pull the project's annotations from Label Studio into the labels store.

The webhook already writes annotations as they happen; this full export pull makes the store
exact (it also sees deletions and anything a webhook missed). When Label Studio cannot be
reached the run goes on with what the store holds (webhook-delivered labels) and says so.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import Settings
from pipelines.stack import TRACKER_NAME
from pipelines.steps.common import settings_for

# One INFO line per HTTP call (a task list, a prediction each) drowns the run's own output.
logging.getLogger("httpx").setLevel(logging.WARNING)


def sync_labels(settings: Settings, project: Optional[int]) -> dict[str, Any]:
    """annotation.sync.sync_project plus the agreement log; never raises for an unreachable LS."""
    from labelloop import labels_store

    report: dict[str, Any] = {"project": project, "synced": False}
    try:
        from annotation.labelstudio import StudioConnectionError
        from annotation.sync import ExportError, sync_project
    except ImportError as exc:  # annotation/ missing: the store alone
        report["error"] = f"annotation sync unavailable: {exc}"
    else:
        try:
            out = sync_project(settings, project)
            report.update(out)
            report["synced"] = True
        except (StudioConnectionError, ExportError) as exc:
            report["error"] = str(exc)
    if not report["synced"]:
        print(f"sync: skipped ({report['error']}); going on with the labels already in the store "
              f"(webhook events)")
    else:
        print(f"sync: project {report['project']}: {report['annotations']} annotations in "
              f"{report['tasks']} tasks, {report['outcomes']}, {report['deleted']} deleted, "
              f"{len(report['skipped'])} skipped (not trainable)")
        try:
            from annotation.agreement import log_agreement

            report["agreement"] = log_agreement(settings, project=report["project"])["versions"]
        except Exception as exc:  # noqa: BLE001 - the agreement log is a report, not the loop
            print(f"note: agreement not logged: {type(exc).__name__}: {exc}")
    with labels_store.open_store(settings) as store:
        report["store"] = store.summary()
        report["store_seq"] = store.current_seq()
    return report


@step(enable_cache=False, experiment_tracker=TRACKER_NAME)
def sync_annotations(
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    project: Optional[int] = None,
    turn: Optional[int] = None,
) -> Annotated[dict, "sync_report"]:
    from labelloop import loop_status

    settings = settings_for(config, overrides)
    loop_status.set_stage(settings, turn, "sync")
    return sync_labels(settings, project)
