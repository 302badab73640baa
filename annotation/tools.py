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
Argilla has one dataset per settings and ignores it. `publish` loads the champion once through
`champion_model` when the caller passes none, and answers "nothing to do" notes (tool down, no
project or dataset yet, no champion) rather than failing the turn.
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


def champion_model(settings: Settings, model=None) -> Optional[tuple[Any, str]]:
    """(model, version): the one given (with a `version` attribute), else the registry's
    champion, loaded once per process as its family loads it (a Classifier, or a generation
    bundle's model and tokenizer); None when there is no champion yet."""
    if model is not None:
        return model, str(model.version)
    from labelloop import challenger, registry

    champion = registry.get_champion(settings)
    if champion is None:
        return None
    version = str(champion.version)
    if settings.task.type == "generation":
        from labelloop.generation.feedback import generator_for

        return generator_for(settings, version), version
    return challenger.classifier_for(settings, version), version


def status_page_url(settings: Settings) -> str:
    """The service's status page, which every tool's news links to."""
    return f"http://{settings.serving.host}:{settings.serving.port}/status"


# -- Label Studio ------------------------------------------------------------------------------
def _ls_sync(settings: Settings, project: Optional[int]) -> dict[str, Any]:
    from annotation.sync import sync_projects

    return sync_projects(settings, project)


def _ls_publish(settings: Settings, project: Optional[int], classifier=None) -> dict[str, Any]:
    """The champion's predictions onto the project's unannotated tasks (skip already-done ones);
    for generation its responses onto the pending tasks of the edit and compare projects."""
    from annotation.labelstudio import (
        LabelConfigError, StudioConnectionError, connect, find_project, push_predictions,
    )

    if settings.task.type == "generation":
        return _ls_publish_generation(settings, classifier)
    try:
        client = connect(settings)
        if project is None:
            found = find_project(client, settings.studio.project_title)
            if found is None:
                return {"pushed": 0, "note": "no Label Studio project yet"}
            project = int(found.id)
    except StudioConnectionError as exc:
        return {"pushed": 0, "note": f"Label Studio unreachable: {exc}"}
    champion = champion_model(settings, classifier)
    if champion is None:
        return {"pushed": 0, "note": "no champion yet"}
    try:
        return push_predictions(settings, project, client, classifier=champion[0])
    except LabelConfigError as exc:  # the project asks for other labels than the model gives
        return {"pushed": 0, "project": project, "note": f"not pushed: {exc}"}


def _ls_publish_generation(settings: Settings, generator=None) -> dict[str, Any]:
    from annotation.labelstudio import LabelConfigError, StudioConnectionError, connect
    from annotation.ls_generation import push_responses

    try:
        client = connect(settings)
    except StudioConnectionError as exc:
        return {"pushed": 0, "note": f"Label Studio unreachable: {exc}"}
    if champion_model(settings, generator) is None:
        return {"pushed": 0, "note": "no champion yet"}
    try:
        return push_responses(settings, client, generator)
    except LabelConfigError as exc:  # a project of that title asks for something else
        return {"pushed": 0, "note": f"not pushed: {exc}"}


def _ls_tell(settings: Settings, project: Optional[int], line: str) -> bool:
    from annotation.labelstudio import StudioConnectionError, connect, tell_annotators

    if settings.task.type != "generation":
        return tell_annotators(settings, project, line)
    from annotation.ls_generation import project_ids

    try:  # both generation projects' annotators hear it
        ids = set(project_ids(settings, connect(settings, timeout=5.0)).values())
    except StudioConnectionError:
        return False
    told = [tell_annotators(settings, pid, line) for pid in sorted(ids | (
        {project} if project is not None else set()))]
    return any(told)


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
