"""ZenML runs whose process was killed (kill -9, OOM, power) stay `running` in the store for
ever. Every labelloop pipeline run is tagged with the pid of the process running it
(`labelloop-pid-<pid>`, local orchestrator only: there the pipeline runs in that process); before
a new run, runs still marked running whose process is gone are marked failed, with the reason.
"""

from __future__ import annotations

import os

from labelloop.processes import alive

PID_TAG = "labelloop-pid-"
_ACTIVE = ("initializing", "running", "provisioning", "queued")


def pid_tags() -> list[str]:
    return [f"{PID_TAG}{os.getpid()}"]


def mark_interrupted_runs() -> list[str]:
    """Mark runs of dead labelloop processes failed; returns their names."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus
    from zenml.models import PipelineRunUpdate

    client = Client()
    if client.active_stack.orchestrator.flavor != "local":
        return []  # elsewhere the orchestrator knows the truth; the pid means nothing here
    marked = []
    for status in _ACTIVE:
        for run in client.list_pipeline_runs(status=status, size=100, hydrate=True):
            pids = [t.name[len(PID_TAG):] for t in (run.tags or []) if t.name.startswith(PID_TAG)]
            if not pids or not pids[0].isdigit():
                continue
            pid = int(pids[0])
            if pid == os.getpid() or alive(pid):
                continue
            client.zen_store.update_run(run.id, PipelineRunUpdate(
                status=ExecutionStatus.FAILED,
                status_reason=f"interrupted: the process running it (pid {pid}) is gone"))
            marked.append(run.name)
    return marked
