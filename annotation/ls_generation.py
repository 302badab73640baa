"""Label Studio projects for generation (`task.type: generation`): *edit* and *compare*.

Two projects per task, titled `<studio.project_title>: edit` and `<...>: compare`, label
configs from annotation/config.py, made or checked idempotently by `ensure_projects`:

- *edit* tasks `{"data": {"prompt", "rank"}}` carry the champion's greedy response as a
  prediction (a `textarea` result of its model version): the annotator keeps it or rewrites it.
  The ML backend (/ls/predict) fills tasks imported without one.
- *compare* tasks `{"data": {"prompt", "response_a", "response_b", "version_a", "version_b",
  "rank"}}` show two responses: the champion's greedy one and a sampled one at import; after a
  promotion, pending tasks show the new champion's (A) against the one they showed before (B).

A prompt holding earlier turns (a chat's later answer) shows them as "Role: text" paragraphs in
$prompt, its exact text kept beside it in data `conversation` (annotation/config.py
`prompt_data` / `task_prompt`): annotators read a conversation, not JSON.

`import_prompts` puts a pool of prompts (annotation/pool.py) into both projects, skipping
prompts a project already holds; `push_responses` gives every pending task of both the current
champion's response (edit: a prediction of its version; compare: new task data). The answers
come back through annotation/records.py (sync and webhook alike).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from annotation.config import (
    PROMPT_KEY, RESPONSE_A, RESPONSE_B, RESPONSE_NAME, VERSION_A, VERSION_B, check_label_config,
    label_config_for, project_kinds, prompt_data, task_prompt,
)
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings


def project_titles(settings: Settings) -> dict[str, str]:
    """kind -> the title of that generation project."""
    task = task_from_settings(settings)
    return {kind: f"{settings.studio.project_title}: {kind}" for kind in project_kinds(task)}


def response_prediction(response: str, version: str) -> dict[str, Any]:
    """A Label Studio prediction pre-filling the edit project's TextArea."""
    return {"model_version": str(version), "score": 1.0,
            "result": [{"from_name": RESPONSE_NAME, "to_name": PROMPT_KEY, "type": "textarea",
                        "value": {"text": [response]}}]}


def edit_task(prompt: str, response: str, version: str, rank: int) -> dict[str, Any]:
    return {"data": {**prompt_data(prompt), "rank": int(rank)},
            "predictions": [response_prediction(response, version)]}


def compare_data(prompt: str, a: str, version_a: str, b: str, version_b: str,
                 rank: Optional[int]) -> dict[str, Any]:
    data = {**prompt_data(prompt), RESPONSE_A: a, RESPONSE_B: b, VERSION_A: str(version_a),
            VERSION_B: str(version_b)}
    if rank is not None:
        data["rank"] = int(rank)
    return data


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def ensure_projects(settings: Settings, client) -> dict[str, Any]:
    """kind -> ProjectInfo: each generation project created, or found by title and checked."""
    from annotation.labelstudio import ProjectInfo, find_project

    task = task_from_settings(settings)
    out = {}
    for kind, title in project_titles(settings).items():
        wanted = {"description": f"labelloop: {task.name} ({kind}); responses by "
                                 f"{settings.registry.model_name}@"
                                 f"{settings.registry.champion_alias}",
                  "show_collab_predictions": True, "sampling": "Sequential sampling"}
        existing = find_project(client, title)
        if existing is None:
            project = client.projects.create(title=title,
                                             label_config=label_config_for(task, kind), **wanted)
            out[kind] = ProjectInfo(id=int(project.id), title=title, created=True)
            continue
        project = client.projects.get(id=existing.id)
        check_label_config(_get(project, "label_config") or "", task, kind)
        changes = {k: v for k, v in wanted.items() if _get(project, k) != v}
        if changes:
            client.projects.update(id=project.id, **changes)
        out[kind] = ProjectInfo(id=int(project.id), title=title, created=False,
                                updated=sorted(changes))
    return out


def project_ids(settings: Settings, client) -> dict[str, int]:
    """kind -> id of the generation projects that exist (none made here)."""
    from annotation.labelstudio import find_project

    out = {}
    for kind, title in project_titles(settings).items():
        found = find_project(client, title)
        if found is not None:
            out[kind] = int(found.id)
    return out


def existing_prompts(client, project_id: int) -> set[str]:
    out = set()
    for t in client.tasks.list(project=project_id, fields="all"):
        prompt = task_prompt(_get(t, "data"))
        if prompt is not None:
            out.add(prompt)
    return out


def champion(settings: Settings, generator=None) -> tuple[Any, str]:
    """(generator, version): the one given, else the registry's champion; an error if none."""
    from annotation.tools import champion_model
    from labelloop.registry import RegistryError

    found = champion_model(settings, generator)
    if found is None:
        raise RegistryError(f"no '{settings.registry.champion_alias}' version of "
                            f"{settings.registry.model_name}: train one first (`labelloop train`)")
    return found


def import_prompts(settings: Settings, texts: Optional[Iterable[str]] = None, client=None,
                   generator=None, file: Optional[str] = None) -> dict[str, Any]:
    """Up to `studio.pool_size` prompts of the pool new to the projects into both: edit tasks
    with the champion's response as a prediction, compare tasks with it (A) and a second,
    sampled response (B; a prompt whose two responses are the same, or one of them empty, gets
    no compare task)."""
    from annotation import pool as pools
    from annotation.labelstudio import connect
    from labelloop.cleaning import Cleaning
    from labelloop.generation.feedback import champion_responses

    raw, where = (list(texts), "the given texts") if texts is not None else \
        pools.raw_pool(settings, file)
    generator, version = champion(settings, generator)
    built = pools.build_pool(settings, Cleaning(), texts=raw, where=where)
    client = client or connect(settings)
    projects = {kind: info.id for kind, info in ensure_projects(settings, client).items()}
    have = {kind: existing_prompts(client, pid) for kind, pid in projects.items()}
    new = [p for p in pools.candidates(built.texts, len(built.texts))
           if p not in have["edit"] or p not in have["compare"]][:settings.studio.pool_size]
    greedy, sampled = champion_responses(settings, generator, new)
    edit, compare, same = [], [], 0
    for rank, (prompt, a, b) in enumerate(zip(new, greedy, sampled)):
        if prompt not in have["edit"]:
            edit.append(edit_task(prompt, a, version, rank))
        if prompt in have["compare"]:
            continue
        if not a.strip() or not b.strip() or a.strip() == b.strip():
            same += 1  # an empty side, or the same response twice: nothing to prefer
            continue
        compare.append({"data": compare_data(prompt, a, version, b, version, rank)})
    for kind, tasks in (("edit", edit), ("compare", compare)):
        for start in range(0, len(tasks), 500):
            client.projects.import_tasks(id=projects[kind], request=tasks[start:start + 500])
    if edit:
        # The Data Manager and the labeling stream show the predictions of this version.
        client.projects.update(id=projects["edit"], model_version=version)
    return {"projects": projects, "project": projects["edit"], "imported": len(edit),
            "imported_compare": len(compare), "skipped_same_responses": same,
            "skipped_in_project": sum(1 for p in built.texts
                                      if p in have["edit"] and p in have["compare"]),
            **built.report(), "model_version": version}


def push_responses(settings: Settings, client, generator=None) -> dict[str, Any]:
    """The champion's responses onto every pending task of both projects: edit tasks lacking a
    prediction of its version get one; compare tasks not showing it get its response as A and
    what they showed as A before as B (champion against its predecessor). Idempotent."""
    from annotation.labelstudio import pending_tasks
    from labelloop.generation.feedback import champion_responses

    generator, version = champion(settings, generator)
    projects = project_ids(settings, client)
    if not projects:
        return {"pushed": 0, "note": "no Label Studio generation projects yet"}
    task = task_from_settings(settings)
    todo_edit, todo_compare = [], []
    for kind, pid in projects.items():
        check_label_config(_get(client.projects.get(id=pid), "label_config") or "", task, kind)
        for t in pending_tasks(client, pid):
            data = _get(t, "data") or {}
            prompt = task_prompt(data)
            if prompt is None or not prompt.strip():
                continue
            if kind == "edit":
                versions = {str(_get(p, "model_version")) for p in (_get(t, "predictions") or [])}
                if version not in versions:
                    todo_edit.append((int(t.id), prompt))
            elif str(data.get(VERSION_A)) != version:
                todo_compare.append((int(t.id), prompt, data))
    prompts = sorted({p for _, p in todo_edit} | {p for _, p, _ in todo_compare})
    greedy, sampled = champion_responses(settings, generator, prompts)
    answer = dict(zip(prompts, greedy))
    second = dict(zip(prompts, sampled))
    if todo_edit:
        requests = [{"task": tid, **response_prediction(answer[p], version)}
                    for tid, p in todo_edit]
        for start in range(0, len(requests), 500):
            client.projects.import_predictions(id=projects["edit"],
                                               request=requests[start:start + 500])
    if "edit" in projects:
        client.projects.update(id=projects["edit"], model_version=version)
    pushed_compare = 0
    for tid, prompt, data in todo_compare:
        a = answer[prompt]
        b, vb = data.get(RESPONSE_A), data.get(VERSION_A)
        if not isinstance(b, str) or not b.strip() or b.strip() == a.strip():
            b, vb = second[prompt], version  # nothing else to compare with: a second sample
        if not a.strip() or not b.strip() or a.strip() == b.strip():
            continue  # nothing to prefer: the task keeps the pair it shows
        client.tasks.update(id=str(tid), data={
            **data, **compare_data(prompt, a, version, b, vb, data.get("rank"))})
        pushed_compare += 1
    return {"projects": projects, "model_version": version,
            "pushed": len(todo_edit) + pushed_compare, "pushed_edit": len(todo_edit),
            "pushed_compare": pushed_compare,
            "kept_compare": len(todo_compare) - pushed_compare}

