"""Feedback step 1: pull the answers of every annotation tool that is on into the labels store.

The tools' webhooks already write answers as they happen; this full pull (Label Studio's export,
Argilla's record listing; annotation/tools.py) makes the store exact (it also sees deletions and
anything a webhook missed). When a tool cannot be reached the run goes on with what the store
holds (webhook-delivered labels) and says so.
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
    """Every annotation tool that is on (`annotation.tools`) pulled into the labels store, plus
    the agreement log; a tool that cannot be reached is reported, never raised."""
    from annotation.tools import enabled
    from labelloop import labels_store

    report: dict[str, Any] = {"project": project, "synced": False, "tools": {}}
    for tool in enabled(settings):
        try:
            out = tool.sync(settings, project)
        except tool.unavailable() as exc:
            report["tools"][tool.name] = {"synced": False, "error": str(exc)}
            print(f"sync: {tool.name}: skipped ({exc}); going on with the labels already in the "
                  "store (webhook events)")
            continue
        report["tools"][tool.name] = {"synced": True, **out}
        report["synced"] = True
        if tool.name == "label-studio":
            report.update(out)  # the Label Studio fields older reports had at the top
        print(f"sync: {tool.name}: {_describe(out)}")
    if report["synced"]:
        try:
            from annotation.agreement import log_agreement

            report["agreement"] = log_agreement(settings)["versions"]
        except Exception as exc:  # noqa: BLE001 - the agreement log is a report, not the loop
            print(f"note: agreement not logged: {type(exc).__name__}: {exc}")
    with labels_store.open_store(settings) as store:
        report["store"] = store.summary()
        report["store_seq"] = store.current_seq()
    return report


def _describe(out: dict[str, Any]) -> str:
    where = (f"project {out['project']}: {out['annotations']} annotations in {out['tasks']} tasks"
             if "project" in out else
             f"dataset {out.get('dataset')}: {out.get('responses')} responses in "
             f"{out.get('records')} records")
    outcomes = out.get("outcomes") or {}
    # "22 unchanged, 3 updated" rather than the dict's repr ("{'unchanged': 22, 'updated': 3}")
    changes = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())) or "no changes"
    return (f"{where}: {changes}, {out.get('deleted')} deleted, "
            f"{len(out.get('skipped') or [])} skipped (not trainable)")


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
