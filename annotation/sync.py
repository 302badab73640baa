"""Pull every annotation of a Label Studio project into the labels store (export snapshots).

Each sync takes a full JSON export snapshot (the only view that also reveals deletions), turns
every annotation into a record with provenance (annotations/records.py, the same conversion the
webhook uses) and applies them in ONE transaction: new ones are inserted, newer versions replace
older ones, identical ones change nothing (running sync twice adds nothing; what the webhook
already stored is recognised), and annotations the store holds but the export lacks are marked
deleted (except rows a webhook wrote after the snapshot was requested). A sync killed midway
leaves the store as it was before it started; the next one completes the work.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Optional

import labelloop  # noqa: F401
from annotation.records import SOURCE, record_from_annotation
from labelloop.labels_store import INVALID, open_store
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings


class ExportError(RuntimeError):
    """Label Studio could not produce the export snapshot."""


def export_snapshot(client, project_id: int, timeout: float = 300.0) -> list[dict[str, Any]]:
    """All tasks of the project with all their annotations (JSON export snapshot)."""
    export = client.projects.exports.create(
        project_id, title="labelloop sync",
        annotation_filter_options={"usual": True, "skipped": True, "ground_truth": True},
        # Full predictions, not ids: an annotation's `prediction` is empty unless the project's
        # model_version names it (not the case with a live ML backend), so the prediction shown
        # is found through `parent_prediction` among these.
        serialization_options={"predictions": {"only_id": False}},
    )
    try:
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            status = client.projects.exports.get(project_id, export.id).status
            if status == "completed":
                break
            if status == "failed":
                raise ExportError(f"Label Studio export {export.id} of project {project_id} failed")
            if time.monotonic() > deadline:
                raise ExportError(f"Label Studio export of project {project_id} took over "
                                  f"{timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raw = b"".join(client.projects.exports.download(project_id, export.id, export_type="JSON"))
    finally:
        try:
            client.projects.exports.delete(project_id, export.id)
        except Exception:  # noqa: BLE001 - a leftover snapshot is harmless
            pass
    tasks = json.loads(raw)
    if not isinstance(tasks, list):
        raise ExportError("unexpected export format (expected a JSON list of tasks)")
    return tasks


def records_from_export(settings: Settings, project_id: int, tasks: list[dict[str, Any]]):
    task_def = task_from_settings(settings)
    records = []
    for task in tasks:
        if not isinstance(task, dict):
            continue
        task_project = task.get("project")
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("id") is None:
                continue
            if task_project not in (None, project_id):
                continue
            records.append(record_from_annotation(task_def, project_id, ann, task, via="sync"))
    return records


def sync_projects(settings: Settings, project_id: Optional[int] = None,
                  client=None) -> dict[str, Any]:
    """What a feedback turn syncs: the project (classification), or every project of the
    family (generation: edit and compare, whichever of them `project_id` names), in one report
    whose counts add up and whose `projects` holds each project's own."""
    if settings.task.type != "generation":
        return sync_project(settings, project_id, client)
    from annotation.labelstudio import connect
    from annotation.ls_generation import project_ids

    client = client or connect(settings)
    ids = sorted(set(project_ids(settings, client).values()) | (
        {project_id} if project_id is not None else set()))
    if not ids:
        raise ExportError("no Label Studio edit or compare project yet; run "
                          "`labelloop annotate setup`")
    reports = {pid: sync_project(settings, pid, client) for pid in ids}
    outcomes: Counter = Counter()
    for r in reports.values():
        outcomes.update(r["outcomes"])
    return {"project": ids if len(ids) > 1 else ids[0], "projects": reports,
            "tasks": sum(r["tasks"] for r in reports.values()),
            "annotations": sum(r["annotations"] for r in reports.values()),
            "outcomes": dict(outcomes), "deleted": sum(r["deleted"] for r in reports.values()),
            "skipped": [s for r in reports.values() for s in r["skipped"]],
            "store": reports[ids[-1]]["store"] if len(ids) == 1 else _store_summary(settings),
            "seconds": round(sum(r["seconds"] for r in reports.values()), 2)}


def _store_summary(settings: Settings) -> dict[str, int]:
    with open_store(settings) as store:
        return store.summary(SOURCE)


def sync_project(settings: Settings, project_id: Optional[int] = None, client=None,
                 tasks: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """Sync one project (default: the one titled `studio.project_title`). Returns a report."""
    from annotation.labelstudio import connect, find_project

    started = time.time()
    if tasks is None:
        client = client or connect(settings)
        if project_id is None:
            project = find_project(client, settings.studio.project_title)
            if project is None:
                raise ExportError(f"no Label Studio project titled "
                                  f"{settings.studio.project_title!r}; run `labelloop annotate setup`")
            project_id = int(project.id)
        tasks = export_snapshot(client, project_id)
    records = records_from_export(settings, project_id, tasks)
    with open_store(settings) as store:
        # One transaction for the whole export: all of it lands, or none of it.
        outcomes = store.upsert_many(records) if records else []
        removed = store.delete_missing(SOURCE, project_id, [r.annotation_id for r in records],
                                       via="sync", stored_before=started)
        summary = store.summary(SOURCE, project_id)
    skipped = [{"annotation": int(r.annotation_id), "task": r.task_id, "reason": r.reason}
               for r in records if r.status == INVALID]
    return {
        "project": project_id, "tasks": len(tasks), "annotations": len(records),
        "outcomes": dict(Counter(outcomes)), "deleted": len(removed), "skipped": skipped,
        "store": summary, "seconds": round(time.time() - started, 2),
    }
