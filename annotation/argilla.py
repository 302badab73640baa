"""Argilla 2.x as an annotation tool of the loop (the `argilla` SDK plus a few REST calls).

- `connect(settings)` checks that the server answers and takes the API key, before anything is
  created.
- `ensure_dataset(settings)` creates the dataset from the task definition (one builder per task
  family in `DATASET_BUILDERS`), or finds it by name in `argilla.workspace` and checks its
  question still asks for the model's labels (`DatasetMismatch` otherwise).
- `log_pool(settings)` predicts a pool of texts with the champion and logs the most informative
  as records, each with the champion's suggestion (value, score, agent = model version) and, as
  metadata, the uncertainty (1 - score: sort by it, descending, for least certain first) and
  the suggestion shown (`model_version`, `suggested_label`, `suggested_score`: the webhook's
  payload carries a record's metadata but not its suggestions). Record ids derive from the text,
  so logging a text again updates that record in place, never a second one.
- `push_suggestions(settings)` gives every record nobody has answered the champion's suggestion
  (in place, by record id); answered records keep the suggestion their annotator saw.
- `sync_dataset(settings)` pulls every response into the labels store (annotation/
  argilla_records.py converts them, the same conversion the webhook uses).

The labels store's `project` for Argilla rows is the dataset's id; `annotation_id` the response
id; `task_id` the record id.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import labelloop  # noqa: F401  (offline switches)
from annotation.argilla_records import (
    CONVERSATION_METADATA, LABEL_QUESTION, PREFERENCE_QUESTION, PROMPT_FIELD, RESPONSE_A,
    RESPONSE_B, RESPONSE_QUESTION, SOURCE, TEXT_FIELD, record_prompt, records_from_response,
)
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

PAGE = 1000  # the most records one GET /api/v1/datasets/{id}/records returns


class ArgillaConnectionError(RuntimeError):
    """Argilla is unreachable, or refuses the API key."""


class DatasetMismatch(ValueError):
    """An Argilla dataset whose questions do not fit the model (or a task family without one)."""


def argilla_url(settings: Settings) -> str:
    return f"http://{settings.argilla.host}:{settings.argilla.port}"


def _key(settings: Settings) -> str:
    from annotation.argilla_server import ArgillaServerError, api_key

    try:
        return api_key(settings)
    except ArgillaServerError as exc:
        raise ArgillaConnectionError(str(exc)) from None


def connect(settings: Settings, key: Optional[str] = None, timeout: float = 30.0):
    """An `rg.Argilla` client after checking the server answers and accepts the key (`me`)."""
    import argilla as rg
    import httpx
    from argilla._exceptions import ArgillaAPIError, ArgillaCredentialsError

    from annotation.side_server import reachable

    base = argilla_url(settings)
    down = (f"Argilla is unreachable at {base}; start it with `labelloop argilla up` or fix "
            "argilla.host/argilla.port")
    reachable(settings.argilla.host, settings.argilla.port, ArgillaConnectionError, down)
    try:
        client = rg.Argilla(api_url=base, api_key=key or _key(settings), timeout=int(timeout),
                            retries=1)
        client.me  # noqa: B018 - the call checks the key
    except (ArgillaCredentialsError, ArgillaAPIError) as exc:
        status = getattr(exc, "status_code", None)
        if isinstance(exc, ArgillaCredentialsError) or status in (401, 403):
            raise ArgillaConnectionError(
                f"Argilla at {base} refused the API key; check argilla.api_key (the owner's key, "
                "see `labelloop argilla status`)") from None
        raise ArgillaConnectionError(f"Argilla at {base} answered {exc}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise ArgillaConnectionError(f"{down} ({type(exc).__name__}: {exc})") from None
    return client


def _http(client):
    return client.api.http_client


def _check(resp, what: str) -> Any:
    if resp.status_code >= 400:
        raise ArgillaConnectionError(f"Argilla {what}: HTTP {resp.status_code} {resp.text[:300]}")
    return resp.json()


# -- dataset ---------------------------------------------------------------------------------
def classification_settings(task) -> Any:
    import argilla as rg

    return rg.Settings(
        guidelines=(f"{task.name}: pick the label that fits the text. The model's guess is "
                    "preselected (its agent is the model version, its score how sure it was): "
                    "keep it if right, pick another if not. Sort by the `uncertainty` metadata, "
                    "descending, to see the texts the model is least sure of first."),
        fields=[rg.TextField(name=TEXT_FIELD, title="Text", use_markdown=False)],
        questions=[rg.LabelQuestion(name=LABEL_QUESTION, title=f"{task.name}: pick one",
                                    # value -> what annotators see (task.display_names)
                                    labels={lab: task.display_name(lab) for lab in task.labels})],
        metadata=[rg.FloatMetadataProperty(name="uncertainty", title="uncertainty (1 - score)"),
                  rg.IntegerMetadataProperty(name="rank", title="import rank")],
        allow_extra_metadata=True,  # model_version / suggested_label / suggested_score
    )


# Argilla has no pairwise question: a label one, with the store's choices (labelloop/tasks.py).
PREFERENCE_LABELS = {"a": "A is better", "b": "B is better", "tie": "as good",
                     "both_bad": "both bad"}


def generation_settings(task) -> Any:
    """Prompt -> response: the model's answer is the suggestion of an editable TextQuestion,
    and a preference question compares two responses (e.g. champion and challenger)."""
    import argilla as rg

    return rg.Settings(
        guidelines=(f"{task.name}: correct the model's response (it is prefilled: edit it, or keep "
                    "it if it is right); then say which of the two responses is better."),
        fields=[rg.TextField(name=PROMPT_FIELD, title="Prompt"),
                rg.TextField(name="response_a", title="Response A", required=False),
                rg.TextField(name="response_b", title="Response B", required=False)],
        questions=[rg.TextQuestion(name=RESPONSE_QUESTION, title="The right response"),
                   rg.LabelQuestion(name=PREFERENCE_QUESTION, title="Which response is better?",
                                    labels=dict(PREFERENCE_LABELS), required=False)],
        metadata=[rg.FloatMetadataProperty(name="uncertainty", title="uncertainty"),
                  rg.IntegerMetadataProperty(name="rank", title="import rank")],
        allow_extra_metadata=True,
    )


# One builder (and one check below) per task family.
DATASET_BUILDERS: dict[str, Callable[[Any], Any]] = {"classification": classification_settings,
                                                     "generation": generation_settings}


def dataset_settings_for(task) -> Any:
    try:
        builder = DATASET_BUILDERS[task.type]
    except KeyError:
        raise DatasetMismatch(f"no Argilla dataset layout for task type {task.type!r} yet") from None
    return builder(task)


def check_dataset(dataset, task) -> None:
    """`DatasetMismatch` unless the dataset asks exactly the task's question."""
    questions = {q.name: q for q in dataset.settings.questions}
    fields = {f.name for f in dataset.settings.fields}
    if task.type == "generation":
        kinds = {name: type(q).__name__ for name, q in questions.items()}
        if PROMPT_FIELD not in fields or kinds.get(RESPONSE_QUESTION) != "TextQuestion":
            raise DatasetMismatch(
                f"the Argilla dataset {dataset.name!r} is not a generation dataset (needs a "
                f"{PROMPT_FIELD!r} field and a {RESPONSE_QUESTION!r} text question; found fields "
                f"{sorted(fields)}, questions {kinds}); use another argilla.dataset name")
        pref = questions.get(PREFERENCE_QUESTION)
        if pref is not None and (kinds[PREFERENCE_QUESTION] != "LabelQuestion"
                                 or sorted(pref.labels) != sorted(PREFERENCE_LABELS)):
            raise DatasetMismatch(
                f"the Argilla dataset {dataset.name!r} has a {PREFERENCE_QUESTION!r} question "
                f"that is not a label question over {sorted(PREFERENCE_LABELS)} (found "
                f"{kinds[PREFERENCE_QUESTION]} {list(getattr(pref, 'labels', []) or [])}); use "
                "another argilla.dataset name")
        return
    if task.type != "classification":
        raise DatasetMismatch(f"no Argilla dataset check for task type {task.type!r}")
    q = questions.get(LABEL_QUESTION)
    if q is None or type(q).__name__ != "LabelQuestion":
        raise DatasetMismatch(
            f"the Argilla dataset {dataset.name!r} has no label question {LABEL_QUESTION!r} "
            f"(found questions {sorted(questions)}); use another argilla.dataset name")
    if TEXT_FIELD not in fields:
        raise DatasetMismatch(f"the Argilla dataset {dataset.name!r} has no {TEXT_FIELD!r} field "
                              f"(found {sorted(fields)})")
    labels = list(q.labels)
    if sorted(labels) != sorted(task.labels):
        raise DatasetMismatch(
            f"the Argilla dataset {dataset.name!r} asks for labels {labels}, the model gives "
            f"{list(task.labels)}; use another argilla.dataset name or train a model for those")


@dataclass
class DatasetInfo:
    id: str
    name: str
    created: bool


def ensure_workspace(client, name: str):
    import argilla as rg

    ws = client.workspaces(name)
    if ws is None:
        ws = rg.Workspace(name=name, client=client).create()
    return ws


def find_dataset(client, settings: Settings):
    import warnings

    with warnings.catch_warnings():  # "not found" is an answer here, not a warning
        warnings.simplefilter("ignore", UserWarning)
        return client.datasets(name=settings.argilla.dataset, workspace=settings.argilla.workspace)


def ensure_dataset(settings: Settings, client=None, task=None) -> tuple[Any, DatasetInfo]:
    """(dataset, info): created from the task, or found and checked. Idempotent."""
    import argilla as rg

    client = client or connect(settings)
    task = task or task_from_settings(settings)
    wanted = dataset_settings_for(task)  # a family without a layout fails before anything exists
    ws = ensure_workspace(client, settings.argilla.workspace)
    ds = find_dataset(client, settings)
    if ds is not None:
        check_dataset(ds, task)
        return ds, DatasetInfo(id=str(ds.id), name=ds.name, created=False)
    ds = rg.Dataset(name=settings.argilla.dataset, workspace=ws, settings=wanted, client=client)
    ds.create()
    return ds, DatasetInfo(id=str(ds.id), name=ds.name, created=True)


def get_dataset(settings: Settings, client=None):
    """The configured dataset (checked against the task), or `DatasetMismatch` if missing."""
    client = client or connect(settings)
    ds = find_dataset(client, settings)
    if ds is None:
        raise DatasetMismatch(
            f"no Argilla dataset {settings.argilla.dataset!r} in workspace "
            f"{settings.argilla.workspace!r}; run `labelloop argilla setup`")
    check_dataset(ds, task_from_settings(settings))
    return ds


# -- records with suggestions ----------------------------------------------------------------
def record_id(text: str) -> str:
    """A record's id from its text: logging a text again updates its record, never adds one."""
    return "t-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def suggestion_metadata(prediction, version: str) -> dict[str, Any]:
    score = float(prediction.score)
    return {"uncertainty": round(1.0 - score, 6), "model_version": str(version),
            "suggested_label": prediction.label, "suggested_score": round(score, 6)}


def build_record(text: str, prediction, version: str, rank: Optional[int] = None):
    import argilla as rg

    metadata = suggestion_metadata(prediction, version)
    if rank is not None:
        metadata["rank"] = int(rank)
    return rg.Record(
        id=record_id(text), fields={TEXT_FIELD: text}, metadata=metadata,
        suggestions=[rg.Suggestion(question_name=LABEL_QUESTION, value=prediction.label,
                                   score=float(prediction.score), agent=str(version))])


def build_generation_record(prompt: str, response: str, version: str,
                            other: Optional[str] = None, other_version: Optional[str] = None,
                            rank: Optional[int] = None, score: Optional[float] = None):
    """A generation record: the champion's `response` as the text question's suggestion (agent:
    its version; score: how sure the model is of it, `response_scores`) and as response A;
    `other` (another sample, or the previous champion's) as response B, left out when there is
    none or it says the same. Metadata `uncertainty` = 1 - score, as for classification."""
    import argilla as rg

    from labelloop.generation.chat import shown_prompt

    shown, kept = shown_prompt(prompt)  # a conversation reads as its turns, kept exactly beside
    fields = {PROMPT_FIELD: shown, RESPONSE_A: response}
    metadata: dict[str, Any] = {"model_version": str(version), "suggested_label": response}
    if kept is not None:
        metadata[CONVERSATION_METADATA] = kept
    if score is not None:
        metadata.update(uncertainty=round(1.0 - float(score), 6),
                        suggested_score=round(float(score), 6))
    if other and other.strip() and other.strip() != response.strip():
        fields[RESPONSE_B] = other
        metadata["version_b"] = str(other_version or version)
    if rank is not None:
        metadata["rank"] = int(rank)
    return rg.Record(id=record_id(prompt), fields=fields, metadata=metadata,
                     suggestions=[rg.Suggestion(question_name=RESPONSE_QUESTION, value=response,
                                                agent=str(version),
                                                score=None if score is None else float(score))])


def _log(ds, records: list) -> None:
    """Records upserted by id, 500 a request, without the SDK's per-call progress bar."""
    import functools

    from argilla.records import _dataset_records as sdk

    bar = sdk.tqdm
    sdk.tqdm = functools.partial(bar, disable=True)
    try:
        for start in range(0, len(records), 500):
            batch = records[start:start + 500]
            ds.records.log(batch, batch_size=len(batch))
    finally:
        sdk.tqdm = bar


def list_records(client, dataset_id: str, include: str = "responses,suggestions") -> list[dict]:
    """Every record of the dataset as the REST API gives it (responses with ids and times,
    which the SDK's Record objects drop)."""
    out, offset = [], 0
    while True:
        page = _check(_http(client).get(
            f"/api/v1/datasets/{dataset_id}/records",
            params={**({"include": include} if include else {}), "offset": offset,
                    "limit": PAGE}),
            "listing records")
        items = page.get("items") or []
        out.extend(items)
        if len(items) < PAGE:
            return out
        offset += PAGE


def log_pool(settings: Settings, texts: Optional[Iterable[str]] = None, client=None,
             classifier=None, candidates: Optional[int] = None,
             file: Optional[str] = None) -> dict[str, Any]:
    """Log up to `argilla.pool_size` new texts as records with the champion's suggestion, the
    most informative first (`studio.ordering`, the same selection Label Studio's import uses).
    The pool is Label Studio's (annotation/pool.py): `texts`, else `file`, else `pool.source`
    (or the training split when `pool.from_training_split`), cleaned as the champion was trained,
    without labelled texts. Texts the dataset already holds are skipped."""
    from annotation import pool as pools
    from annotation.labelstudio import _select_pool, load_champion
    from labelloop.cleaning import Cleaning

    raw, where = (list(texts), "the given texts") if texts is not None else \
        pools.raw_pool(settings, file)  # a missing pool stops before anything is made
    if task_from_settings(settings).type == "generation":
        return _log_prompts(settings, raw, where, client, classifier)
    if classifier is None:
        classifier, version = load_champion(settings)
    else:
        version = str(classifier.version)
    configured = task_from_settings(settings)
    if set(classifier.task.labels) != set(configured.labels):
        raise DatasetMismatch(
            f"the champion (version {version}) predicts {list(classifier.task.labels)} but "
            f"task.labels is {list(configured.labels)}; fix the config or train a new model")
    size = settings.argilla.pool_size
    built = pools.build_pool(settings, getattr(classifier, "cleaning", Cleaning()), texts=raw,
                             where=where)
    if texts is None or candidates is not None:
        factor = 1 if settings.studio.ordering == "random" else 4
        chosen = pools.candidates(built.texts, candidates or size * factor)
    else:
        chosen = built.texts
    client = client or connect(settings)
    ds, info = ensure_dataset(settings, client, classifier.task)
    seen = {(r.get("external_id") or "") for r in list_records(client, info.id, include="")}
    pool, skipped = [], 0
    for t in chosen:
        if record_id(t) in seen:
            skipped += 1
            continue
        seen.add(record_id(t))
        pool.append(t)
    pool, preds = _select_pool(settings, classifier, pool, size)
    records = [build_record(t, p, version, rank) for rank, (t, p) in enumerate(zip(pool, preds))]
    _log(ds, records)
    return {"dataset": info.id, "name": info.name, "created": info.created,
            "logged": len(records), "skipped_existing_or_empty": skipped + built.empty,
            **built.report(), "model_version": version}


def _generator(settings: Settings, generator=None) -> Optional[tuple[Any, str]]:
    """(generator, version): the one given (with a `version` attribute), else the champion's."""
    if generator is not None:
        return generator, str(generator.version)
    from labelloop import registry
    from labelloop.generation.feedback import generator_for

    champion = registry.get_champion(settings)
    if champion is None:
        return None
    return generator_for(settings, str(champion.version)), str(champion.version)


def champion_responses(settings: Settings, generator, prompts: list[str]) -> tuple[list, list]:
    """(greedy, sampled) responses to the prompts (labelloop.generation.feedback's)."""
    from labelloop.generation.feedback import champion_responses as responses

    return responses(settings, generator, prompts)


def response_scores(settings: Settings, generator, prompts: list[str],
                    responses: list[str]) -> list[float]:
    """How sure the model is of each of its responses: the geometric mean of its tokens'
    probabilities, exp(-mean token NLL), in [0, 1] (0 for an empty response)."""
    import math

    from labelloop.generation import evaluation

    if not prompts:
        return []
    nll, count = evaluation.response_nll(generator.model, generator.tokenizer, prompts, responses,
                                         settings)
    return [math.exp(-n / c) if c else 0.0 for n, c in zip(nll, count)]


def _log_prompts(settings: Settings, raw: list, where: str, client=None,
                 generator=None) -> dict[str, Any]:
    """log_pool for generation: up to `argilla.pool_size` new prompts of the pool as records
    with the champion's response (suggestion and response A) and a second sample (B)."""
    from annotation import pool as pools
    from labelloop.cleaning import Cleaning

    found = _generator(settings, generator)
    if found is None:
        from labelloop.registry import RegistryError

        raise RegistryError(f"no '{settings.registry.champion_alias}' version of "
                            f"{settings.registry.model_name}: train one first (`labelloop train`)")
    generator, version = found
    built = pools.build_pool(settings, Cleaning(), texts=raw, where=where)
    client = client or connect(settings)
    ds, info = ensure_dataset(settings, client, generator.task)
    seen = {(r.get("external_id") or "") for r in list_records(client, info.id, include="")}
    prompts = [p for p in pools.candidates(built.texts, len(built.texts))
               if record_id(p) not in seen][:settings.argilla.pool_size]
    skipped = len(built.texts) - len(prompts)
    greedy, sampled = champion_responses(settings, generator, prompts)
    scores = response_scores(settings, generator, prompts, greedy)
    # Ranked least certain first (the `rank` metadata), as classification's margin ordering.
    order = sorted(range(len(prompts)), key=lambda i: scores[i])
    records = [build_generation_record(prompts[i], greedy[i], version, sampled[i], version, rank,
                                       scores[i])
               for rank, i in enumerate(order)]
    _log(ds, records)
    return {"dataset": info.id, "name": info.name, "created": info.created,
            "logged": len(records), "skipped_existing_or_empty": skipped + built.empty,
            **built.report(), "model_version": version}


def pending(records: Sequence[dict], field: str = TEXT_FIELD) -> list[dict]:
    """Records nobody has answered (no response of any status)."""
    return [r for r in records if not r.get("responses")
            and isinstance((r.get("fields") or {}).get(field), str)]


def _push_generation(settings: Settings, client, ds, generator=None) -> dict[str, Any]:
    """push_suggestions for generation: the new champion's response becomes the suggestion and
    response A of every unanswered record; what it was shown before becomes response B (the
    comparison is then champion against its predecessor)."""
    found = _generator(settings, generator)
    if found is None:
        return {"pushed": 0, "note": "no champion yet"}
    generator, version = found
    check_dataset(ds, generator.task)
    todo = [r for r in pending(list_records(client, str(ds.id)), PROMPT_FIELD)
            if (r.get("metadata") or {}).get("model_version") != version]
    if todo:
        prompts = [record_prompt(r) for r in todo]
        greedy, _ = champion_responses(settings, generator, prompts)
        scores = response_scores(settings, generator, prompts, greedy)
        records = []
        for r, prompt, response, score in zip(todo, prompts, greedy, scores):
            meta = r.get("metadata") or {}
            rec = build_generation_record(prompt, response, version,
                                          r["fields"].get(RESPONSE_A), meta.get("model_version"),
                                          meta.get("rank"), score)
            rec.id = r.get("external_id") or rec.id  # the record's own id: updated in place
            records.append(rec)
        _log(ds, records)
    return {"dataset": str(ds.id), "model_version": version, "pushed": len(todo)}


def push_suggestions(settings: Settings, client=None, classifier=None) -> dict[str, Any]:
    """The champion's suggestion (and metadata) onto every unanswered record lacking one of its
    version, in place by record id. Idempotent."""
    client = client or connect(settings)
    ds = find_dataset(client, settings)
    if ds is None:
        return {"pushed": 0, "note": f"no Argilla dataset {settings.argilla.dataset!r} yet"}
    if task_from_settings(settings).type == "generation":
        return _push_generation(settings, client, ds, classifier)
    from annotation.tools import champion_model

    champion = champion_model(settings, classifier)
    if champion is None:
        return {"pushed": 0, "note": "no champion yet"}
    classifier, version = champion
    check_dataset(ds, classifier.task)
    todo = [r for r in pending(list_records(client, str(ds.id)))
            if (r.get("metadata") or {}).get("model_version") != version
            or not any(s.get("agent") == version for s in r.get("suggestions") or [])]
    if todo:
        preds = classifier.predict([r["fields"][TEXT_FIELD] for r in todo])
        records = []
        for r, p in zip(todo, preds):
            rec = build_record(r["fields"][TEXT_FIELD], p, version,
                               (r.get("metadata") or {}).get("rank"))
            rec.id = r.get("external_id") or rec.id  # the record's own id: updated in place
            records.append(rec)
        _log(ds, records)
    return {"dataset": str(ds.id), "model_version": version, "pushed": len(todo)}


# -- sync ------------------------------------------------------------------------------------
def usernames(client) -> dict[str, str]:
    return {str(u["id"]): u["username"]
            for u in _check(_http(client).get("/api/v1/users"), "listing users").get("items", [])}


def sync_dataset(settings: Settings, client=None) -> dict[str, Any]:
    """Every response of the dataset into the labels store, in one transaction: new and changed
    ones written, unchanged ones left alone (a second sync writes nothing), responses the store
    holds but Argilla no longer has (deleted responses or records) removed; drafts are not
    labels (skipped unless they replace a stored answer, which then stops training)."""
    from labelloop.labels_store import INVALID, open_store

    started = time.time()
    client = client or connect(settings)
    ds = get_dataset(settings, client)
    dataset_id = str(ds.id)
    records = list_records(client, dataset_id)
    names = usernames(client)
    task_def = task_from_settings(settings)
    converted = []
    for rec in records:
        for resp in rec.get("responses") or []:
            user = {"id": resp.get("user_id"), "username": names.get(str(resp.get("user_id")))}
            converted.extend(records_from_response(task_def, dataset_id, resp, rec, user,
                                                   via="sync"))
    with open_store(settings) as store:
        keep = [r for r in converted if r is not None]
        present = {r.annotation_id for r in keep}
        # A draft whose answer the store never held stays out; one that replaces a stored
        # answer is written (as not trainable).
        keep = [r for r in keep if not r.extra.get("draft")
                or store.get(SOURCE, dataset_id, r.annotation_id) is not None]
        outcomes = store.upsert_many(keep) if keep else []
        removed = store.delete_missing(SOURCE, dataset_id, present, via="sync",
                                       stored_before=started)
        summary = store.summary(SOURCE, dataset_id)
    skipped = [{"response": r.annotation_id, "record": r.task_id, "reason": r.reason}
               for r in keep if r.status == INVALID]
    return {"dataset": dataset_id, "records": len(records), "responses": len(converted),
            "outcomes": dict(Counter(outcomes)), "deleted": len(removed), "skipped": skipped,
            "store": summary, "seconds": round(time.time() - started, 2)}


# -- webhook and setup -----------------------------------------------------------------------
def webhook_url(settings: Settings) -> str:
    """The service's Argilla endpoint, by IP address (Argilla's docs advise against localhost)."""
    return f"http://{settings.serving.host}:{settings.serving.port}/argilla/webhook"


def ensure_webhook(settings: Settings, dataset_id: str, client=None) -> dict[str, Any]:
    """Register (or re-enable) the Argilla webhook to the service and keep its secret where the
    service reads it (annotation/argilla_webhook.py). Idempotent."""
    import argilla as rg

    from annotation.argilla_webhook import EVENTS, write_hook

    client = client or connect(settings)
    url = webhook_url(settings)
    hook, created, updated = None, False, False
    for existing in client.webhooks:
        if existing.url == url:
            hook = existing
            break
    if hook is None:
        hook = rg.Webhook(url=url, events=EVENTS, description="labelloop: responses -> labels store",
                          _client=client).create()
        created = True
    elif sorted(hook.events) != sorted(EVENTS) or not hook.enabled:
        hook.events, hook.enabled = list(EVENTS), True
        hook.update()
        updated = True
    write_hook(settings, {"id": str(hook.id), "url": url, "secret": hook.secret,
                          "dataset_id": dataset_id})
    return {"id": str(hook.id), "url": url, "created": created, "updated": updated}


def setup(settings: Settings, client=None, progress=print) -> dict[str, Any]:
    """Dataset + webhook. What `labelloop argilla setup` and the demo run."""
    client = client or connect(settings)
    ds, info = ensure_dataset(settings, client)
    progress(f"Argilla dataset {info.name!r} ({info.id}): "
             + ("created" if info.created else "exists, questions match the model"))
    hook = ensure_webhook(settings, info.id, client)
    progress(f"Argilla webhook -> {hook['url']}: "
             + ("created" if hook["created"] else "updated" if hook["updated"] else "unchanged"))
    return {"dataset": info.id, "name": info.name, "created": info.created, "webhook": hook,
            "url": f"{argilla_url(settings)}/dataset/{info.id}/annotation-mode"}


def tell_annotators(settings: Settings, line: str) -> bool:
    """The loop's latest news at the top of the dataset's guidelines (Argilla shows them beside
    every record), with a link to the service's status page. Best effort: never fails a turn."""
    try:
        client = connect(settings, timeout=5.0)
        ds = find_dataset(client, settings)
        if ds is None:
            return False
        from annotation.tools import status_page_url

        status = status_page_url(settings)
        base = dataset_settings_for(task_from_settings(settings)).guidelines
        ds.settings.guidelines = f"**Model:** {line}\n\nEvery training run: {status}\n\n{base}"
        ds.update()
    except Exception as exc:  # noqa: BLE001 - Argilla down or the dataset gone
        print(f"note: could not update the Argilla guidelines: {type(exc).__name__}")
        return False
    return True
