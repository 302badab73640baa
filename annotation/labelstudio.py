"""Label Studio project setup with label-studio-sdk 2.x: project, tasks with predictions, ML
backend and webhook, all idempotent.

- `connect(settings)` checks the server and the token before anything is created.
- `ensure_project(settings)` creates the project from the task's label config, or finds it by
  title and checks its config still matches the model (`LabelConfigError` otherwise).
- `import_pool(settings)` predicts a pool of unlabelled texts with the champion and imports the
  most informative first (`studio.ordering`, labelloop/selection.py), each with the
  prediction attached (label, score, model version); texts already in the project are skipped.
- `connect_ml_backend(settings, project_id)` connects the labelloop service (`/ls`, Basic auth)
  and `ensure_webhook(settings, project_id)` registers `/ls/webhook` with the secret header.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

import labelloop  # noqa: F401  (offline switches)
from annotation.config import (
    CHOICES_NAME, HINT_KEY, TEXT_KEY, TEXT_NAME, LabelConfigError, check_label_config,
    label_config_for, task_prompt,
)
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

SECRET_HEADER = "X-Labelloop-Secret"
PUSH_THREADS = 4  # task-data updates in flight at once after a promotion (push_predictions)
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                   "ANNOTATIONS_DELETED"]


class StudioConnectionError(RuntimeError):
    """Label Studio is unreachable, or refuses the token."""


def studio_url(settings: Settings) -> str:
    return f"http://{settings.studio.host}:{settings.studio.port}"


def service_url(settings: Settings) -> str:
    """The labelloop service's ML-backend mount, as Label Studio should call it."""
    return f"http://{settings.serving.host}:{settings.serving.port}/ls"


def webhook_url(settings: Settings) -> str:
    return service_url(settings) + "/webhook"


def _token(settings: Settings) -> str:
    from annotation.studio import StudioError, api_token

    try:
        return api_token(settings)
    except StudioError as exc:
        raise StudioConnectionError(str(exc)) from None


def connect(settings: Settings, token: Optional[str] = None, timeout: float = 30.0):
    """An SDK client after checking the server answers and accepts the token (`whoami`)."""
    import httpx
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    from annotation.side_server import reachable

    base = studio_url(settings)
    down = (f"Label Studio is unreachable at {base}; start it with `labelloop studio up` or fix "
            "studio.host/studio.port")
    # Fail fast when nothing listens: the SDK's retries spent about 3 s per call on a server
    # that is down (13 s of a 72 s feedback turn).
    reachable(settings.studio.host, settings.studio.port, StudioConnectionError, down)
    client = LabelStudio(base_url=base, api_key=token or _token(settings), timeout=timeout)
    try:
        client.users.whoami()
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise StudioConnectionError(
                f"Label Studio at {base} refused the API token (HTTP {exc.status_code}); check "
                "studio.api_token (the legacy token of the admin user)") from None
        raise StudioConnectionError(f"Label Studio at {base} answered HTTP {exc.status_code}: "
                                    f"{str(exc.body)[:200]}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise StudioConnectionError(f"{down} ({type(exc).__name__}: {exc})") from None
    return client


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


# -- project ---------------------------------------------------------------------------------
@dataclass
class ProjectInfo:
    id: int
    title: str
    created: bool
    updated: list[str] = field(default_factory=list)


def find_project(client, title: str) -> Optional[Any]:
    found = [p for p in client.projects.list(title=title) if _get(p, "title") == title]
    if not found:  # some servers ignore the title filter: look through all
        found = [p for p in client.projects.list() if _get(p, "title") == title]
    if len(found) > 1:
        raise LabelConfigError(
            f"{len(found)} Label Studio projects are titled {title!r}; keep one or set "
            "studio.project_title")
    return found[0] if found else None


def _desired_project_fields(settings: Settings) -> dict[str, Any]:
    task = task_from_settings(settings)
    return {
        "description": f"labelloop: {task.name} ({', '.join(task.labels)}); predictions by "
                       f"{settings.registry.model_name}@{settings.registry.champion_alias}",
        "show_collab_predictions": True,  # annotators see the model's prediction
        "sampling": "Sequential sampling",  # tasks in import order: least certain first
    }


def ensure_project(settings: Settings, client=None) -> ProjectInfo:
    """Create the project, or check and (only where needed) update the existing one."""
    client = client or connect(settings)
    task = task_from_settings(settings)
    title = settings.studio.project_title
    wanted = _desired_project_fields(settings)
    existing = find_project(client, title)
    if existing is None:
        project = client.projects.create(title=title, label_config=label_config_for(task), **wanted)
        return ProjectInfo(id=int(project.id), title=title, created=True)
    project = client.projects.get(id=existing.id)
    check_label_config(_get(project, "label_config") or "", task)
    changes = {k: v for k, v in wanted.items() if _get(project, k) != v}
    if changes:
        client.projects.update(id=project.id, **changes)
    return ProjectInfo(id=int(project.id), title=title, created=False, updated=sorted(changes))


def check_project_matches_model(settings: Settings, project_id: int, model_task, client=None) -> None:
    """`LabelConfigError` if the project's labels differ from the (champion) model's."""
    client = client or connect(settings)
    project = client.projects.get(id=project_id)
    check_label_config(_get(project, "label_config") or "", model_task)


# -- ML backend and webhook -------------------------------------------------------------------
def ensure_webhook(settings: Settings, project_id: int, client=None) -> dict[str, Any]:
    """Register (or fix) the project webhook to the service's /ls/webhook with the secret header."""
    client = client or connect(settings)
    secret = settings.serving.webhook_secret
    if not secret:
        raise LabelConfigError(
            "serving.webhook_secret is empty: set LABELLOOP__SERVING__WEBHOOK_SECRET so the "
            "service can tell Label Studio's webhooks from anyone else's")
    url = webhook_url(settings)
    headers = {SECRET_HEADER: secret}
    wanted = {"url": url, "headers": headers, "send_payload": True, "send_for_all_actions": False,
              "actions": WEBHOOK_ACTIONS, "is_active": True}
    for hook in client.webhooks.list(project=str(project_id)):
        if _get(hook, "url") != url or _get(hook, "project") not in (project_id, None):
            continue
        if _get(hook, "project") is None:
            continue  # an organization-wide hook someone else made: leave it alone
        same = (_get(hook, "headers") == headers and bool(_get(hook, "send_payload"))
                and bool(_get(hook, "is_active"))
                and sorted(_get(hook, "actions") or []) == sorted(WEBHOOK_ACTIONS))
        if same:
            return {"id": int(hook.id), "url": url, "created": False, "updated": False}
        client.webhooks.update(id=hook.id, **wanted)
        return {"id": int(hook.id), "url": url, "created": False, "updated": True}
    hook = client.webhooks.create(project=project_id, **wanted)
    return {"id": int(hook.id), "url": url, "created": True, "updated": False}


def connect_ml_backend(settings: Settings, project_id: int, client=None) -> dict[str, Any]:
    """Connect the labelloop service as the project's ML backend (Basic auth). Idempotent.

    Label Studio checks the backend's /health while connecting, so the service must be up.
    """
    from label_studio_sdk.core.api_error import ApiError

    client = client or connect(settings)
    s = settings.serving
    if not s.ls_basic_auth_password:
        raise LabelConfigError(
            "serving.ls_basic_auth_password is empty: set LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD"
            " (Label Studio and the service must share it)")
    url = service_url(settings)
    wanted = {"url": url, "auth_method": "BASIC_AUTH", "basic_auth_user": s.ls_basic_auth_user,
              "basic_auth_pass": s.ls_basic_auth_password, "is_interactive": True,
              "title": "labelloop", "timeout": 100.0}
    try:
        for backend in client.ml.list(project=project_id):
            if _get(backend, "url") == url:
                same = (_get(backend, "auth_method") == "BASIC_AUTH"
                        and _get(backend, "basic_auth_user") == s.ls_basic_auth_user)
                # The password is write-only in the API: always (re)send it, it is cheap.
                # (LS 1.23 answers 500 to an update without `project`.)
                client.ml.update(id=backend.id, project=project_id, **wanted)
                return {"id": int(backend.id), "url": url, "created": False, "updated": not same,
                        "state": _get(client.ml.get(id=backend.id), "state")}
        backend = client.ml.create(project=project_id, **wanted)
    except ApiError as exc:
        raise StudioConnectionError(
            f"Label Studio could not connect the ML backend {url} (HTTP {exc.status_code}: "
            f"{str(exc.body)[:300]}); is `labelloop serve` running with the same "
            "ls_basic_auth_user/password?") from None
    return {"id": int(backend.id), "url": url, "created": True, "updated": False,
            "state": _get(backend, "state")}


def tell_annotators(settings: Settings, project: Optional[int], line: str) -> bool:
    """Put the loop's latest news where annotators look: the project's instructions (the
    labeling page's "i" button), with a link to the status page, and the ML backend's
    description (kept by Label Studio 1.23 and readable through its API, though its Model page
    does not show it). Label Studio 1.23 drops the webhook's answer to "Start training", so these
    are the channels it offers.
    Best effort: never fails a turn."""
    from annotation.tools import status_page_url

    if project is None:
        return False
    status = status_page_url(settings)
    try:
        client = connect(settings, timeout=5.0)
        html = (f"<p><b>Model:</b> {line}</p><p>Versions, scores and every training run: "
                f'<a href="{status}" target="_blank">{status}</a></p>')
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
                                 description=f"{line} Status: {status}"[:1000])
    except Exception as exc:  # noqa: BLE001
        body = str(getattr(exc, "body", "") or exc)[:300]
        print(f"note: could not update the ML backend's description: {type(exc).__name__} {body}")
    return True


# -- tasks with predictions ---------------------------------------------------------------------
def uncertainty_order(probabilities: np.ndarray, ordering: str, seed: int = 0) -> np.ndarray:
    """Indices of all rows, most informative first, by a probability-only strategy of
    labelloop.selection (random, least_confidence/uncertainty, margin, entropy, mix with one of
    those). `as_given` keeps the rows' order: `import_pool` has selected and ordered them already
    (the embedding-based strategies need more than probabilities).
    """
    from labelloop import selection

    probs = np.asarray(probabilities, dtype=np.float64)
    if ordering == "as_given":
        return np.arange(probs.shape[0])
    return selection.select(ordering, probs, probs.shape[0], seed=seed)


def prediction_for(label: str, score: float, model_version: str) -> dict[str, Any]:
    """A Label Studio prediction (pre-annotation) for our Choices control."""
    return {
        "model_version": str(model_version),
        "score": float(score),
        "result": [{"from_name": CHOICES_NAME, "to_name": TEXT_NAME, "type": "choices",
                    "value": {"choices": [label]}}],
    }


def hint_prefix(model_version: str) -> str:
    """How the header's sentence of `model_version` starts (what a task's hint is checked by)."""
    return f"Model v{model_version}'s guess:"


def model_hint(label: str, score: float, model_version: str) -> str:
    """The sentence the label config's header shows above the (preselected) choices."""
    return (f"{hint_prefix(model_version)} {label}, {score:.0%} sure. It is preselected "
            "below: keep it if right, pick another if not.")


def task_data(text: str, prediction: Any, rank: int, model_version: str,
              shown: Callable[[str], str] = str) -> dict[str, Any]:
    """A task's data. `uncertainty`, `margin` and `rank` are JSON numbers (plain Python floats
    and ints, never strings or numpy scalars); Label Studio sorts them as numbers only in a
    Data Manager tab that types them Number (`ensure_numeric_columns`). `shown` names a label
    the way the choices show it (task.display_names)."""
    top2 = sorted(float(v) for v in prediction.probabilities.values())[-2:]
    score = float(prediction.score)
    return {TEXT_KEY: text,
            "uncertainty": round(1.0 - score, 6),
            "margin": round(top2[-1] - top2[0], 6),
            "rank": int(rank),
            HINT_KEY: model_hint(shown(prediction.label), score, model_version)}


def build_tasks(texts: Sequence[str], predictions: Sequence[Any], model_version: str,
                ordering: str, seed: int = 0,
                shown: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """Tasks {"data", "predictions"} in the requested order."""
    if not texts:
        return []
    labels = list(predictions[0].probabilities)
    probs = np.array([[p.probabilities[lab] for lab in labels] for p in predictions])
    order = uncertainty_order(probs, ordering, seed)
    tasks = []
    for rank, i in enumerate(order):
        p = predictions[int(i)]
        tasks.append({
            "data": task_data(texts[int(i)], p, rank, model_version, shown),
            "predictions": [prediction_for(p.label, p.score, model_version)],
        })
    return tasks


NUMERIC_FIELDS = ("uncertainty", "margin", "rank")


def ensure_numeric_columns(client, project_id: int) -> int:
    """Make the Data Manager sort `uncertainty`, `margin` and `rank` as numbers.

    Label Studio types task-data columns it does not know from the label config as text and
    sorts them as text ("10" before "2"), whatever the JSON type; it sorts a column as a number
    only when the tab's `columnsDisplayType` says Number (data_manager/managers.py,
    `apply_ordering`). So: a project without tabs gets a "Default" tab with those types; existing
    tabs get them added where unset (a type someone chose stays). Returns the tabs written.
    """
    wanted = {f"tasks:data.{name}": "Number" for name in NUMERIC_FIELDS}
    views = list(client.views.list(project=project_id))
    if not views:
        client.views.create(project=project_id,
                            data={"title": "Default", "columnsDisplayType": wanted})
        return 1
    written = 0
    for view in views:
        data = dict(_get(view, "data") or {})
        types = dict(data.get("columnsDisplayType") or {})
        if all(key in types for key in wanted):
            continue
        data["columnsDisplayType"] = {**wanted, **types}
        client.views.update(id=str(view.id), project=project_id, data=data)
        written += 1
    return written


def existing_texts(client, project_id: int) -> set[str]:
    """The texts (or, in a generation project, the prompts) the project's tasks show."""
    texts = set()
    for t in client.tasks.list(project=project_id, fields="all"):
        data = _get(t, "data")
        text = data.get(TEXT_KEY) if isinstance(data, dict) else None
        texts.update(x for x in (text, task_prompt(data)) if isinstance(x, str))
    return texts


def load_champion(settings: Settings):
    """(Classifier, version) of the current champion."""
    from labelloop import registry
    from labelloop.modeling import Classifier

    champion = registry.get_champion(settings)
    if champion is None:
        raise registry.RegistryError(
            f"no '{settings.registry.champion_alias}' version of {settings.registry.model_name}: "
            "train one first (`labelloop train`)")
    bundle = registry.fetch_bundle(settings, champion.version)
    return Classifier(bundle, version=str(champion.version)), str(champion.version)


def _select_pool(settings: Settings, classifier, pool: list[str], size: int):
    """(texts, predictions) of the `size` texts to import, in the order `studio.ordering` shows
    them: one batched pass of the champion gives the probabilities (and, for the diverse and
    balanced orderings, the embeddings). A pool smaller than `size` is imported whole, ordered."""
    from labelloop import selection

    if not pool:
        return [], []
    st = settings.studio
    k = min(size, len(pool))
    if selection.needs_embeddings(st.ordering, st.mix_with):
        if not hasattr(classifier, "model"):
            raise ValueError(f"studio.ordering {st.ordering!r} needs the model's embeddings; "
                             "this classifier gives only predictions (use a probability-only "
                             "ordering: margin, least_confidence, entropy, random)")
        scores = selection.score_texts(classifier, pool)
        probs, embeddings = scores.probabilities, scores.embeddings
        # log-probabilities are logits whose softmax is exactly these probabilities
        preds = classifier.task.predictions_from_logits(np.log(np.clip(probs, 1e-12, 1.0)))
    else:
        preds = classifier.predict(pool)
        labels = list(classifier.task.labels)
        probs = np.array([[p.probabilities[lab] for lab in labels] for p in preds])
        embeddings = None
    order = selection.select(st.ordering, probs, k, embeddings=embeddings,
                             seed=settings.training.seed, random_share=st.mix_random_share,
                             mix_with=st.mix_with, diverse_candidates=st.diverse_candidates)
    return [pool[int(i)] for i in order], [preds[int(i)] for i in order]


def import_pool(settings: Settings, texts: Optional[Iterable[str]] = None, project_id: Optional[int] = None,
                client=None, classifier=None, candidates: Optional[int] = None,
                file: Optional[str] = None) -> dict[str, Any]:
    """Import up to `studio.pool_size` new texts as tasks, predictions attached, least certain first.

    The pool (annotation/pool.py): `texts`, else `file`, else `pool.source` (or, when asked, the
    training split), cleaned the way the champion was trained, without texts already labelled;
    of `candidates` of them (default 4 x pool_size, a stable sample) the `pool_size` most
    informative are imported. A pool without usable texts is an error before anything is made.
    """
    from annotation import pool as pools
    from labelloop.cleaning import Cleaning

    if settings.task.type == "generation":  # prompts into the edit and compare projects
        from annotation.ls_generation import import_prompts

        return import_prompts(settings, texts, client, classifier, file)
    # The pool is read first: a missing file or a failing query stops before anything else.
    raw, where = (list(texts), "the given texts") if texts is not None else \
        pools.raw_pool(settings, file)
    if classifier is None:
        classifier, version = load_champion(settings)
    else:
        version = str(classifier.version)
    size = settings.studio.pool_size
    built = pools.build_pool(settings, getattr(classifier, "cleaning", Cleaning()), texts=raw,
                             where=where)
    if texts is None or candidates is not None:
        factor = 1 if settings.studio.ordering == "random" else 4
        chosen = pools.candidates(built.texts, candidates or size * factor)
    else:
        chosen = built.texts
    client = client or connect(settings)
    if project_id is None:
        configured = task_from_settings(settings)
        if set(classifier.task.labels) != set(configured.labels):
            # Checked before creating anything: no project for labels the model cannot give.
            raise LabelConfigError(
                f"the champion (version {version}) predicts {list(classifier.task.labels)} but "
                f"task.labels is {list(configured.labels)}; fix the config or train a new model")
        project_id = ensure_project(settings, client).id
    check_project_matches_model(settings, project_id, classifier.task, client)
    seen = existing_texts(client, project_id)
    pool, dup = [], 0
    for t in chosen:
        if t in seen:
            dup += 1
            continue
        seen.add(t)
        pool.append(t)
    pool, preds = _select_pool(settings, classifier, pool, size)
    tasks = build_tasks(pool, preds, version, "as_given", seed=settings.training.seed,
                        shown=task_from_settings(settings).display_name)
    if tasks:
        for start in range(0, len(tasks), 500):
            client.projects.import_tasks(id=project_id, request=tasks[start:start + 500])
        # Label Studio's "Prediction score" column and the labeling stream show only the
        # predictions of the project's `model_version`, which connecting the ML backend sets to
        # the backend's title: point it at the version whose predictions were just imported
        # (what `push_predictions` does after a promotion).
        client.projects.update(id=project_id, model_version=version)
    ensure_numeric_columns(client, project_id)
    return {"project": project_id, "imported": len(tasks),
            "skipped_existing_or_empty": dup + built.empty, "skipped_in_project": dup,
            **built.report(),
            "model_version": version, "ordering": settings.studio.ordering,
            "mean_uncertainty": (float(np.mean([t["data"]["uncertainty"] for t in tasks]))
                                 if tasks else None)}


# Label Studio's MLBackendState codes, in words for the progress line.
ML_STATES = {"CO": "connected", "DI": "disconnected", "ER": "error (see Label Studio's log)",
             "TR": "training", "PR": "predicting"}


def setup(settings: Settings, client=None, ml_backend: Optional[bool] = None,
          progress=print) -> dict[str, Any]:
    """Project + webhook + ML backend. `ml_backend=None`: connect it if the service answers."""
    import httpx

    # Everything that can be checked is checked before anything is created.
    if not settings.serving.webhook_secret:
        raise LabelConfigError(
            "serving.webhook_secret is empty: set LABELLOOP__SERVING__WEBHOOK_SECRET (the service "
            "needs the same value) before setting up the project")
    if ml_backend and not settings.serving.ls_basic_auth_password:
        raise LabelConfigError(
            "serving.ls_basic_auth_password is empty: set LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD")
    client = client or connect(settings)
    if settings.task.type == "generation":
        return _setup_generation(settings, client, ml_backend, progress)
    info = ensure_project(settings, client)
    progress(f"project {info.title!r} (id {info.id}): "
             + ("created" if info.created else ("updated " + ", ".join(info.updated)
                                                if info.updated else "unchanged")))
    out: dict[str, Any] = {"project": info.id, "created": info.created, "updated": info.updated}
    out["webhook"] = ensure_webhook(settings, info.id, client)
    progress(f"webhook -> {out['webhook']['url']}: "
             + ("created" if out["webhook"]["created"] else "updated" if out["webhook"]["updated"]
                else "unchanged"))
    ml_backend = _backend_wanted(settings, ml_backend, progress)
    if ml_backend:
        out["ml_backend"] = connect_ml_backend(settings, info.id, client)
        state = out["ml_backend"]["state"]
        progress(f"ML backend {out['ml_backend']['url']}: {ML_STATES.get(state, state)}")
    out["url"] = f"{studio_url(settings)}/projects/{info.id}/data"
    return out


def _backend_wanted(settings: Settings, ml_backend: Optional[bool], progress) -> bool:
    """`ml_backend` None: connect the service as the ML backend if it answers (and says why not)."""
    import httpx

    if ml_backend is not None:
        return ml_backend
    try:
        ml_backend = httpx.get(service_url(settings) + "/health", timeout=2.0).status_code < 500
    except httpx.HTTPError:
        ml_backend = False
        progress(f"ML backend not connected: the service does not answer at "
                 f"{service_url(settings)} (start `labelloop serve`, then rerun setup)")
    if ml_backend and not settings.serving.ls_basic_auth_password:
        ml_backend = False
        progress("ML backend not connected: serving.ls_basic_auth_password is empty (set "
                 "LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD for the service and setup)")
    return ml_backend


def _setup_generation(settings: Settings, client, ml_backend: Optional[bool],
                      progress) -> dict[str, Any]:
    """setup for generation: the edit and compare projects (annotation/ls_generation.py), the
    webhook on both, the ML backend on the edit project (it pre-fills responses there; its
    model card holds "Start training"). `project` is the edit project."""
    from annotation.ls_generation import ensure_projects

    infos = ensure_projects(settings, client)
    out: dict[str, Any] = {"projects": {k: i.id for k, i in infos.items()}, "webhooks": {}}
    for kind, info in infos.items():
        progress(f"{kind} project {info.title!r} (id {info.id}): "
                 + ("created" if info.created else ("updated " + ", ".join(info.updated)
                                                    if info.updated else "unchanged")))
        hook = out["webhooks"][kind] = ensure_webhook(settings, info.id, client)
        progress(f"webhook of the {kind} project -> {hook['url']}: "
                 + ("created" if hook["created"] else "updated" if hook["updated"]
                    else "unchanged"))
    edit = infos["edit"]
    out.update(project=edit.id, created=edit.created, updated=edit.updated,
               webhook=out["webhooks"]["edit"])
    if _backend_wanted(settings, ml_backend, progress):
        out["ml_backend"] = connect_ml_backend(settings, edit.id, client)
        state = out["ml_backend"]["state"]
        progress(f"ML backend {out['ml_backend']['url']} (edit project): "
                 f"{ML_STATES.get(state, state)}")
    out["urls"] = {k: f"{studio_url(settings)}/projects/{i.id}/data" for k, i in infos.items()}
    out["url"] = out["urls"]["edit"]
    return out


def retrieve_predictions(settings: Settings, project_id: int, client=None) -> dict[str, Any]:
    """Label Studio's bulk "Retrieve predictions" action over all tasks of the project."""
    import httpx

    token = _token(settings)
    resp = httpx.post(
        f"{studio_url(settings)}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        json={"selectedItems": {"all": True, "excluded": []}},
        headers={"Authorization": f"Token {token}"}, timeout=300.0,
    )
    if resp.status_code >= 400:
        raise StudioConnectionError(f"retrieve predictions failed: HTTP {resp.status_code} "
                                    f"{resp.text[:300]}")
    return resp.json()


def pending_tasks(client, project_id: int) -> list[Any]:
    """Tasks nobody has annotated (nor skipped) yet."""
    out = []
    for t in client.tasks.list(project=project_id, fields="all"):
        if (_get(t, "total_annotations") or 0) == 0 and (_get(t, "cancelled_annotations") or 0) == 0:
            out.append(t)
    return out


def push_predictions(settings: Settings, project_id: Optional[int] = None, client=None,
                     classifier=None) -> dict[str, Any]:
    """Attach the (new) champion's predictions to every pending task that lacks one of its version.

    What the feedback loop calls after a promotion, so annotators see the new model's answers
    without waiting for Label Studio to ask the service. Uses `projects.import_predictions`
    (one request per 500 tasks); tasks already holding this version's prediction are skipped.
    Each such task's data is brought up to date too (one request per task): the header sentence
    above the choices ("Model v3's guess: ..."), `uncertainty` and `margin` now say what the new
    model thinks, so the page never names one version while another's answer is preselected.
    Annotated tasks keep theirs: what the model said when the annotator answered.
    """
    client = client or connect(settings)
    if project_id is None:
        project = find_project(client, settings.studio.project_title)
        if project is None:
            raise LabelConfigError(f"no Label Studio project titled {settings.studio.project_title!r}")
        project_id = int(project.id)
    if classifier is None:
        classifier, version = load_champion(settings)
    else:
        version = str(classifier.version)
    check_project_matches_model(settings, project_id, classifier.task, client)
    todo = []  # (task id, data, lacks this version's prediction)
    for t in pending_tasks(client, project_id):
        versions = {str(_get(p, "model_version")) for p in (_get(t, "predictions") or [])}
        data = dict(_get(t, "data") or {})
        text = data.get(TEXT_KEY)
        stale = not str(data.get(HINT_KEY, "")).startswith(hint_prefix(version))
        if (version not in versions or stale) and isinstance(text, str) and text.strip():
            todo.append((int(t.id), data, version not in versions))
    if todo:
        shown = task_from_settings(settings).display_name
        preds = classifier.predict([data[TEXT_KEY] for _, data, _ in todo])
        requests = [{"task": task_id, **prediction_for(p.label, p.score, version)}
                    for (task_id, _, lacks), p in zip(todo, preds) if lacks]
        for start in range(0, len(requests), 500):
            client.projects.import_predictions(id=project_id, request=requests[start:start + 500])

        def update(item) -> None:
            (task_id, data, _), p = item
            rank = data.get("rank") if isinstance(data.get("rank"), int) else 0
            client.tasks.update(id=str(task_id), data={
                **data, **task_data(data[TEXT_KEY], p, rank, version, shown)})

        # Label Studio has no bulk update of task data: one PATCH per task, a few at once
        # (200 tasks on the 2-core box: 17.7 s one by one, 10.1 s four at once, 12-13 s with
        # 8-16). Predictions go first: a push cut short in here is finished by the next one,
        # which finds the tasks whose sentence still names another version.
        with ThreadPoolExecutor(max_workers=PUSH_THREADS) as pool:
            list(pool.map(update, zip(todo, preds)))
    client.projects.update(id=project_id, model_version=version)
    return {"project": project_id, "model_version": version,
            "pushed": sum(1 for *_, lacks in todo if lacks)}
