"""The annotation tools behind one interface, so the loop never asks which tool it talks to.

`annotation.tools` in the settings lists the tools that are on (`label-studio`, `argilla`);
`enabled(settings)` gives one `Tool` per entry. Each tool:

    name                              "label-studio" | "argilla"
    sync(settings, project)           pull its answers into the labels store; a report dict
    publish(settings, project, clf)   the champion's predictions onto its pending items
    tell(settings, project, line)     the loop's news where its annotators look (best effort)
    unavailable                       the exception types meaning "the tool is down / not set
                                      up": the loop goes on without that tool and says so

`project` is the Label Studio project id a feedback turn runs for (None: the configured one);
Argilla has one dataset per settings and ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from labelloop.settings import Settings


@dataclass(frozen=True)
class Tool:
    name: str
    sync: Callable[[Settings, Optional[int]], dict[str, Any]]
    publish: Callable[[Settings, Optional[int], Any], dict[str, Any]]
    tell: Callable[[Settings, Optional[int], str], bool]
    unavailable: Callable[[], tuple[type[BaseException], ...]]


# -- Label Studio ------------------------------------------------------------------------------
def _ls_sync(settings: Settings, project: Optional[int]) -> dict[str, Any]:
    from annotation.sync import sync_project

    return sync_project(settings, project)


def _ls_publish(settings: Settings, project: Optional[int], classifier=None) -> dict[str, Any]:
    from pipelines.steps.feedback_publish import push

    return push(settings, project, classifier=classifier)


def _ls_tell(settings: Settings, project: Optional[int], line: str) -> bool:
    from pipelines.steps.feedback_publish import tell_annotators

    return tell_annotators(settings, project, line)


def _ls_unavailable() -> tuple[type[BaseException], ...]:
    from annotation.labelstudio import StudioConnectionError
    from annotation.sync import ExportError

    return (StudioConnectionError, ExportError)


# -- Argilla -------------------------------------------------------------------------------------
def _ar_sync(settings: Settings, project: Optional[int]) -> dict[str, Any]:
    from annotation.argilla import sync_dataset

    return sync_dataset(settings)


def _ar_publish(settings: Settings, project: Optional[int], classifier=None) -> dict[str, Any]:
    from annotation.argilla import ArgillaConnectionError, push_suggestions

    try:
        return push_suggestions(settings, classifier=classifier)
    except ArgillaConnectionError as exc:
        return {"pushed": 0, "note": f"Argilla unreachable: {exc}"}


def _ar_tell(settings: Settings, project: Optional[int], line: str) -> bool:
    from annotation.argilla import tell_annotators

    return tell_annotators(settings, line)


def _ar_unavailable() -> tuple[type[BaseException], ...]:
    from annotation.argilla import ArgillaConnectionError, DatasetMismatch

    return (ArgillaConnectionError, DatasetMismatch)


TOOLS: dict[str, Tool] = {
    "label-studio": Tool("label-studio", _ls_sync, _ls_publish, _ls_tell, _ls_unavailable),
    "argilla": Tool("argilla", _ar_sync, _ar_publish, _ar_tell, _ar_unavailable),
}


def enabled(settings: Settings) -> list[Tool]:
    return [TOOLS[name] for name in settings.annotation.tools]


def is_enabled(settings: Settings, name: str) -> bool:
    return name in settings.annotation.tools
