"""Feedback step 5: put the champion to work.

- `reload_service`: POST the running service's `/admin/reload` (Bearer `serving.admin_token`), so
  it switches to the new champion now rather than at its next registry poll
  (`serving.poll_interval_s`). A service that is not running, or no admin token, is not an error:
  the service polls the registry by itself.
- `push_predictions`: in every annotation tool that is on (`annotation.tools`,
  annotation/tools.py), every unannotated item gets the champion's prediction (label, score,
  model version) unless it already holds one of that version: Label Studio's pending tasks
  (`push`; the project's `model_version` is set to it) and Argilla's unanswered records
  (annotation/argilla.py `push_suggestions`). Idempotent.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Optional

from zenml import step

from labelloop.settings import Settings
from pipelines.steps.common import settings_for

# One INFO line per HTTP call (a task list, a prediction each) drowns the run's own output.
logging.getLogger("httpx").setLevel(logging.WARNING)


def service_base_url(settings: Settings) -> str:
    return f"http://{settings.serving.host}:{settings.serving.port}"


def reload(settings: Settings, timeout: float = 120.0) -> dict[str, Any]:
    import httpx

    url = service_base_url(settings) + "/admin/reload"
    token = settings.serving.admin_token
    if not token:
        return {"reloaded": False, "note": "serving.admin_token is not set: the service picks the "
                f"new champion up at its next registry poll ({settings.serving.poll_interval_s}s)"}
    try:
        resp = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except httpx.HTTPError as exc:
        return {"reloaded": False, "note": f"the service does not answer at {url} "
                f"({type(exc).__name__}); it loads the champion when it starts"}
    try:
        body = resp.json()
    except ValueError:
        body = {"text": resp.text[:200]}
    if resp.status_code >= 400:
        return {"reloaded": False, "status": resp.status_code,
                "note": f"the service refused the reload (HTTP {resp.status_code}): "
                        f"{body.get('error', body)}"}
    return {"reloaded": True, "status": resp.status_code, "service": body}


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def pending_tasks(client, project_id: int) -> list[dict[str, Any]]:
    """Unannotated tasks: id, text, and the model versions of the predictions they hold."""
    from annotation.config import TEXT_KEY

    out = []
    for t in client.tasks.list(project=project_id, fields="all"):
        if (_get(t, "total_annotations") or 0) > 0 or (_get(t, "cancelled_annotations") or 0) > 0:
            continue
        data = _get(t, "data") or {}
        text = data.get(TEXT_KEY) if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            continue
        versions = {str(_get(p, "model_version")) for p in (_get(t, "predictions") or [])}
        out.append({"id": int(_get(t, "id")), "text": text, "versions": versions})
    return out


def push(settings: Settings, project: Optional[int], client=None,
         classifier=None) -> dict[str, Any]:
    """The champion's predictions onto the project's unannotated tasks (skip already-done ones)."""
    from annotation.labelstudio import (
        StudioConnectionError, connect, find_project, prediction_for,
    )

    try:
        client = client or connect(settings)
        if project is None:
            found = find_project(client, settings.studio.project_title)
            if found is None:
                return {"pushed": 0, "note": "no Label Studio project yet"}
            project = int(found.id)
    except StudioConnectionError as exc:
        return {"pushed": 0, "note": f"Label Studio unreachable: {exc}"}
    if classifier is None:
        from labelloop import challenger, registry

        champion = registry.get_champion(settings)
        if champion is None:
            return {"pushed": 0, "note": "no champion yet"}
        version = str(champion.version)
        classifier = challenger.classifier_for(settings, version)  # loaded once per process
    else:
        version = str(classifier.version)
    tasks = [t for t in pending_tasks(client, project) if version not in t["versions"]]
    preds = classifier.predict([t["text"] for t in tasks]) if tasks else []
    requests = [{"task": t["id"], **prediction_for(p.label, p.score, version)}
                for t, p in zip(tasks, preds)]
    for start in range(0, len(requests), 500):  # one request per 500 tasks, not one per task
        client.projects.import_predictions(id=project, request=requests[start:start + 500])
    client.projects.update(id=project, model_version=version)
    return {"pushed": len(tasks), "project": project, "model_version": version}


def status_page_url(settings: Settings) -> str:
    return service_base_url(settings) + "/status"


def tell_annotators(settings: Settings, project: Optional[int], line: str) -> bool:
    """Put the loop's latest news where annotators look: the project's instructions (the
    labeling page's "i" button), with a link to the status page, and the description of the ML
    backend's card (project settings, Model: where "Start training" is pressed). Label Studio
    1.23 drops the webhook's answer to "Start training", so these are the channels it offers.
    Best effort: never fails a turn."""
    if project is None:
        return False
    try:
        from annotation.labelstudio import connect, service_url

        client = connect(settings, timeout=5.0)
        html = (f"<p><b>Model:</b> {line}</p><p>Versions, scores and every training run: "
                f'<a href="{status_page_url(settings)}" target="_blank">'
                f"{status_page_url(settings)}</a></p>")
        client.projects.update(id=project, expert_instruction=html)
    except Exception as exc:  # noqa: BLE001 - Label Studio down or the project gone
        print(f"note: could not update the project's instructions: {type(exc).__name__}")
        return False
    try:
        url = service_url(settings)
        for backend in client.ml.list(project=project):
            if _get(backend, "url") == url:
                # LS 1.23 re-validates the whole backend on update (connection and auth): send
                # url, project and the Basic-auth pair (the password is write-only) with it.
                client.ml.update(id=backend.id, project=project, url=url,
                                 title=_get(backend, "title") or "labelloop",
                                 auth_method="BASIC_AUTH",
                                 basic_auth_user=settings.serving.ls_basic_auth_user,
                                 basic_auth_pass=settings.serving.ls_basic_auth_password,
                                 description=f"{line} Status: {status_page_url(settings)}"[:1000])
    except Exception as exc:  # noqa: BLE001
        body = str(getattr(exc, "body", "") or exc)[:300]
        print(f"note: could not update the ML backend's description: {type(exc).__name__} {body}")
    return True


@step(enable_cache=False)
def reload_service(
    retrain_result: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    turn: Optional[int] = None,
) -> Annotated[dict, "reload_result"]:
    from labelloop import loop_status

    settings = settings_for(config, overrides)
    loop_status.set_stage(settings, turn, "reload")
    if not retrain_result.get("promoted"):
        out = {"reloaded": False, "note": "no new champion: nothing to reload"}
        print("service: " + out["note"])
        return out
    out = reload(settings)
    print("service: " + (f"reloaded, serving {out['service']}" if out["reloaded"] else out["note"]))
    return out


@step(enable_cache=False)
def push_predictions(
    reload_result: dict,
    config: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    project: Optional[int] = None,
    turn: Optional[int] = None,
) -> Annotated[dict, "push_result"]:
    from labelloop import loop_status

    settings = settings_for(config, overrides)
    loop_status.set_stage(settings, turn, "push")
    if not settings.feedback.push_predictions:
        return {"pushed": 0, "note": "feedback.push_predictions is off"}
    return publish_all(settings, project)


def publish_all(settings: Settings, project: Optional[int]) -> dict[str, Any]:
    """The champion's predictions onto the pending items of every annotation tool that is on
    (`annotation.tools`); a tool that is down is reported, not an error."""
    from annotation.tools import enabled

    out: dict[str, Any] = {"pushed": 0, "tools": {}}
    for tool in enabled(settings):
        try:
            got = tool.publish(settings, project, None)
        except tool.unavailable() as exc:
            got = {"pushed": 0, "note": f"{tool.name} unavailable: {exc}"}
        out["tools"][tool.name] = got
        out["pushed"] += int(got.get("pushed", 0))
        if got.get("model_version"):
            out["model_version"] = got["model_version"]
        print(f"predictions: {tool.name}: {got.get('pushed', 0)} pending item(s) got version "
              f"{got.get('model_version', '?')}'s prediction"
              + (f" ({got['note']})" if got.get("note") else ""))
    return out


def tell_all(settings: Settings, project: Optional[int], line: str) -> None:
    """The loop's news to the annotators of every tool that is on (best effort)."""
    from annotation.tools import enabled

    for tool in enabled(settings):
        tool.tell(settings, project, line)
