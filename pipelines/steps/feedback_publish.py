"""Feedback step 5: put the champion to work.

- `reload_service`: POST the running service's `/admin/reload` (Bearer `serving.admin_token`), so
  it switches to the new champion now rather than at its next registry poll
  (`serving.poll_interval_s`). A service that is not running, or no admin token, is not an error:
  the service polls the registry by itself.
- `push_predictions`: in every annotation tool that is on (`annotation.tools`,
  annotation/tools.py), every unannotated item gets the champion's prediction (label, score,
  model version) unless it already holds one of that version: Label Studio's pending tasks
  (annotation/labelstudio.py `push_predictions`; the project's `model_version` is set to it)
  and Argilla's unanswered records (annotation/argilla.py `push_suggestions`). Idempotent.
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
        # without a version nothing was pushed: "none pushed" (not "got version ?'s prediction")
        what = "none pushed"
        if got.get("model_version"):
            out["model_version"] = got["model_version"]
            what = (f"{got.get('pushed', 0)} pending item(s) got version "
                    f"{got['model_version']}'s prediction")
        print(f"predictions: {tool.name}: {what}" + (f" ({got['note']})" if got.get("note") else ""))
    return out


def tell_all(settings: Settings, project: Optional[int], line: str) -> None:
    """The loop's news to the annotators of every tool that is on (best effort)."""
    from annotation.tools import enabled

    for tool in enabled(settings):
        tool.tell(settings, project, line)
