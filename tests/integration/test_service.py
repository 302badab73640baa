"""The BentoML service as a real `bentoml serve` process, called over HTTP.

One server per module (started once, ~10 s), a temp data dir with a real MLflow registry holding
two untrained versions (seed 0 = champion at start, seed 1 = the one hot reload switches to).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import labelloop  # noqa: F401
from labelloop import registry
from labelloop.settings import load_settings
from tests.helpers import REPO_ROOT, free_port, register_untrained_version, stop_process_group

pytestmark = pytest.mark.integration

ADMIN = "test-admin-token"
LS_USER, LS_PW = "labelloop", "test-ls-password"
HOOK_SECRET = "test-webhook-secret"
MAX_TEXTS = 64

LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single" showInLine="true">
    <Choice value="negative"/>
    <Choice value="neutral"/>
    <Choice value="positive"/>
  </Choices>
</View>"""


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({
        "LABELLOOP__DATA_DIR": str(data_dir),
        "LABELLOOP__SERVING__ADMIN_TOKEN": ADMIN,
        "LABELLOOP__SERVING__LS_BASIC_AUTH_USER": LS_USER,
        "LABELLOOP__SERVING__LS_BASIC_AUTH_PASSWORD": LS_PW,
        "LABELLOOP__SERVING__WEBHOOK_SECRET": HOOK_SECRET,
        "LABELLOOP__SERVING__MAX_TEXTS_PER_REQUEST": str(MAX_TEXTS),
        "LABELLOOP__SERVING__POLL_INTERVAL_S": "1",
        "LABELLOOP__SERVING__MAX_LATENCY_MS": "5000",
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server not ready in {timeout}s:\n{log_path.read_text()[-4000:]}")


def run_server(tmp_path_factory, **extra_env: str):
    """Register two versions, start `bentoml serve`, yield its facts, stop it (a generator)."""
    data_dir = tmp_path_factory.mktemp("serving")
    settings = load_settings(overrides={"data_dir": str(data_dir)}, environ={})
    v1 = str(register_untrained_version(settings, seed=0, champion=True))
    v2 = str(register_untrained_version(settings, seed=1, champion=False))
    port = free_port()
    log_path = data_dir / "server.log"
    proc = start_server(_env(data_dir, **extra_env), port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log_path)
        yield {"url": url, "settings": settings, "v1": v1, "v2": v2, "log": log_path,
               "data_dir": data_dir}
    finally:
        stop_process_group(proc)
        # secrets must never reach the logs
        text = log_path.read_text(errors="replace")
        for secret in (ADMIN, LS_PW, HOOK_SECRET):
            assert secret not in text, "a secret appeared in the server log"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_server(tmp_path_factory)


def basic(user=LS_USER, pw=LS_PW) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def admin_reload(url: str, token: str | None = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{url}/admin/reload", headers=headers, timeout=120)


# ---- /classify ---------------------------------------------------------------------------

def test_classify_single(server):
    r = httpx.post(f"{server['url']}/classify", json={"text": "I love this phone"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == server["v1"]
    assert body["label"] in ("negative", "neutral", "positive")
    assert set(body["probabilities"]) == {"negative", "neutral", "positive"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["score"] == max(body["probabilities"].values())
    assert len(body["predictions"]) == 1


def test_classify_batch_keeps_order(server):
    texts = ["great", "terrible service", "it is a table", "great"]
    r = httpx.post(f"{server['url']}/classify", json={"texts": texts}, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 4
    assert preds[0]["probabilities"] == pytest.approx(preds[3]["probabilities"])  # in its place
    # A text classified alone matches its own slot in the batch, and more closely than any other
    # slot. (On a GPU, bf16 and another padded batch shape move probabilities by about 1e-4.)
    def distance(a: dict, b: dict) -> float:
        return max(abs(a[k] - b[k]) for k in a)

    for i in (1, 2):
        single = httpx.post(f"{server['url']}/classify", json={"text": texts[i]},
                            timeout=30).json()["probabilities"]
        nearest = min(range(len(preds)), key=lambda j: distance(single, preds[j]["probabilities"]))
        assert nearest == i
        assert single == pytest.approx(preds[i]["probabilities"], abs=2e-3)


def test_metadata(server):
    r = httpx.get(f"{server['url']}/metadata", timeout=10)
    assert r.status_code == 200
    meta = r.json()
    assert meta["model_name"] == server["settings"].registry.model_name
    assert meta["model_version"] == server["v1"]
    assert meta["labels"] == ["negative", "neutral", "positive"]
    assert meta["task"]["type"] == "classification"
    assert meta["base_model"] and meta["dataset_digest"] == "untrained-seed-0"
    for probe in ("healthz", "livez", "readyz"):
        assert httpx.get(f"{server['url']}/{probe}", timeout=5).status_code == 200
    # serving.metrics (default on): Prometheus counters include /classify requests
    assert httpx.post(f"{server['url']}/classify", json={"text": "count me"},
                      timeout=30).status_code == 200
    metrics = httpx.get(f"{server['url']}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'endpoint="/classify"' in metrics.text, metrics.text[:2000]


def test_concurrent_requests_are_batched(server):
    url = server["url"]
    before = httpx.get(f"{url}/metadata", timeout=10).json()["batch_stats"]

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            rs = await asyncio.gather(*[
                client.post(f"{url}/classify", json={"text": f"text number {i}"})
                for i in range(64)
            ])
        return rs

    rs = asyncio.run(main())
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    after = httpx.get(f"{url}/metadata", timeout=10).json()["batch_stats"]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 64
    assert batches < 64 and after["largest_batch"] > 1, (before, after)


@pytest.mark.parametrize("payload, status, fragment", [
    ({"text": ""}, 422, "empty"),
    ({"text": "   "}, 422, "empty"),
    ({"texts": []}, 422, "empty"),
    ({"texts": ["ok", 3]}, 422, "texts[1]"),
    ({"texts": ["ok", None]}, 422, "texts[1]"),
    ({"texts": "not a list"}, 422, "list"),
    ({"text": 5}, 422, "text[0]"),
    ({}, 422, "exactly one"),
    ({"text": "a", "texts": ["b"]}, 422, "exactly one"),
    ({"texts": ["x"] * (MAX_TEXTS + 1)}, 413, "maximum"),
])
def test_classify_bad_input(server, payload, status, fragment):
    r = httpx.post(f"{server['url']}/classify", json=payload, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_classify_malformed_json_and_huge_text(server):
    url = server["url"]
    r = httpx.post(f"{url}/classify", content=b'{"texts": ["a"', timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.text
    r = httpx.post(f"{url}/classify", json={"text": "word " * 400_000}, timeout=60)  # 2 MB
    assert r.status_code == 200, r.text  # truncated to the model's max length
    # and the service keeps serving
    assert httpx.post(f"{url}/classify", json={"text": "still here"}, timeout=30).status_code == 200


def test_prediction_log_records_served_predictions(server):
    from labelloop.prediction_log import read_predictions

    marker = f"log me {time.time()}"
    assert httpx.post(f"{server['url']}/classify", json={"text": marker}, timeout=30).status_code == 200
    path = server["settings"].prediction_log_path
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in read_predictions(path, limit=500) if r.text == marker]
        if rows:
            break
        time.sleep(0.2)
    assert rows, "prediction not logged"
    assert rows[0].source == "classify" and rows[0].model_version in (server["v1"], server["v2"])
    assert set(rows[0].probabilities) == {"negative", "neutral", "positive"}


# ---- admin auth ----------------------------------------------------------------------------

def test_admin_reload_auth(server):
    assert admin_reload(server["url"], token=None).status_code == 401
    assert admin_reload(server["url"], token="wrong").status_code == 403
    r = admin_reload(server["url"])
    assert r.status_code == 200 and r.json()["changed"] is False


# ---- Label Studio protocol ----------------------------------------------------------------

def _ls_task(i: int, text: str) -> dict:
    """A task as Label Studio 1.23 sends it to /predict."""
    return {
        "id": i, "data": {"text": text}, "meta": {}, "created_at": "2026-11-23T10:00:00.000000Z",
        "updated_at": "2026-11-23T10:00:00.000000Z", "is_labeled": False, "overlap": 1,
        "inner_id": i, "total_annotations": 0, "cancelled_annotations": 0,
        "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
        "last_comment_updated_at": None, "project": 1, "updated_by": None,
        "file_upload": None, "comment_authors": [], "annotations": [], "predictions": [],
    }


def _predict_payload(tasks, config=LABEL_CONFIG) -> dict:
    return {"tasks": tasks, "project": "1.1763892800", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}


def test_ls_health_setup_versions(server):
    url = server["url"]
    r = httpx.get(f"{url}/ls/health", headers=basic(), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "UP"
    r = httpx.post(f"{url}/ls/setup", headers=basic(), timeout=10, json={
        "project": "1.1763892800", "schema": LABEL_CONFIG, "hostname": "http://127.0.0.1:8080",
        "access_token": "0123456789abcdef0123456789abcdef01234567", "model_version": None,
        "extra_params": None})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] in (server["v1"], server["v2"])
    r = httpx.get(f"{url}/ls/versions", headers=basic(), timeout=30)
    assert r.status_code == 200
    assert set(r.json()["versions"]) == {server["v1"], server["v2"]}


def test_ls_predict_many_tasks_in_order(server):
    tasks = [_ls_task(i, f"tweet number {i} {'good' if i % 2 else 'bad'}") for i in range(2000)]
    r = httpx.post(f"{server['url']}/ls/predict", headers=basic(),
                   json=_predict_payload(tasks), timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2000
    first = results[0]
    assert first["model_version"] in (server["v1"], server["v2"])
    assert 0 < first["score"] <= 1
    region = first["result"][0]
    assert region["from_name"] == "sentiment" and region["to_name"] == "text"
    assert region["type"] == "choices"
    assert region["value"]["choices"][0] in ("negative", "neutral", "positive")
    # order: the answer for task k equals /classify on task k's text
    for k in (0, 1, 1999):
        c = httpx.post(f"{server['url']}/classify", json={"text": tasks[k]["data"]["text"]},
                       timeout=30).json()
        if c["model_version"] == results[k]["model_version"]:
            assert results[k]["score"] == pytest.approx(c["score"], abs=1e-4)


@pytest.mark.parametrize("payload, status, fragment", [
    (_predict_payload([{"id": 7, "data": {"tweet": "x"}}]), 422, "no data key 'text'"),
    (_predict_payload([_ls_task(1, "x")], LABEL_CONFIG.replace(
        '<Choice value="neutral"/>', '<Choice value="meh"/>')), 422, "label mismatch"),
    ({**_predict_payload([_ls_task(1, "x")]), "params": {"from_name": "nope"}}, 422,
     "unknown from_name"),
    (_predict_payload([_ls_task(1, "x")], "<View><Text name='t' value='$text'/>"), 422, "XML"),
    ({"tasks": [_ls_task(1, "x")]}, 422, "label_config"),
])
def test_ls_predict_bad_input(server, payload, status, fragment):
    r = httpx.post(f"{server['url']}/ls/predict", headers=basic(), json=payload, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_ls_setup_rejects_mismatched_labels(server):
    config = LABEL_CONFIG.replace('<Choice value="positive"/>', "")
    r = httpx.post(f"{server['url']}/ls/setup", headers=basic(), timeout=10,
                   json={"project": "2.1", "schema": config})
    assert r.status_code == 422 and "positive" in r.json()["error"]


def test_ls_auth(server):
    url = server["url"]
    assert httpx.get(f"{url}/ls/health", timeout=10).status_code == 401
    assert httpx.get(f"{url}/ls/health", headers=basic(pw="nope"), timeout=10).status_code == 401
    assert httpx.get(f"{url}/ls/health", headers=basic(user="x"), timeout=10).status_code == 401
    r = httpx.post(f"{url}/ls/predict", json=_predict_payload([_ls_task(1, "x")]), timeout=10)
    assert r.status_code == 401
    assert httpx.get(f"{url}/ls/versions", timeout=10).status_code == 401
    # webhook: no secret and no basic auth -> 401; wrong secret -> 403
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}}
    assert httpx.post(f"{url}/ls/webhook", json=event, timeout=10).status_code == 401
    r = httpx.post(f"{url}/ls/webhook", json=event, headers={"X-Labelloop-Secret": "wrong"},
                   timeout=10)
    assert r.status_code == 403


def _annotation_event(action: str, annotation_id: int, choice: str) -> dict:
    """An ANNOTATION_CREATED/UPDATED event as LS 1.23's webhook system sends it."""
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "result": [{
                "id": "abc123", "type": "choices", "value": {"choices": [choice]},
                "origin": "prediction-changed", "to_name": "text", "from_name": "sentiment"}],
            "created_username": "ann@labelloop.local, 2", "created_ago": "0 minutes",
            "completed_by": 2, "was_cancelled": False, "ground_truth": False,
            "created_at": "2026-11-23T10:00:00.000000Z", "updated_at": "2026-11-23T10:00:00.000000Z",
            "draft_created_at": None, "lead_time": 3.2, "import_id": None,
            "last_action": "prediction", "bulk_created": False, "task": 11, "project": 1,
            "updated_by": 2, "parent_prediction": 5, "parent_annotation": None,
            "last_created_by": None},
        "task": {"id": 11, "data": {"text": "the food was cold"}, "meta": {},
                 "created_at": "2026-11-23T10:00:00.000000Z",
                 "updated_at": "2026-11-23T10:00:00.000000Z", "is_labeled": True,
                 "overlap": 1, "inner_id": 11, "total_annotations": 1,
                 "cancelled_annotations": 0, "total_predictions": 1, "comment_count": 0,
                 "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
                 "updated_by": 2, "file_upload": None, "comment_authors": []},
        "project": {"id": 1, "title": "labelloop sentiment", "label_config": LABEL_CONFIG,
                    "min_annotations_to_start_training": 0},
    }


def test_ls_webhook_annotation_events(server):
    url = server["url"]
    secret = {"X-Labelloop-Secret": HOOK_SECRET}
    r = httpx.post(f"{url}/ls/webhook", headers=secret, timeout=30,
                   json=_annotation_event("ANNOTATION_CREATED", 101, "negative"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["action"] == "ANNOTATION_CREATED"
    r = httpx.post(f"{url}/ls/webhook", headers=secret, timeout=30,
                   json=_annotation_event("ANNOTATION_UPDATED", 101, "neutral"))
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/ls/webhook", headers=basic(), timeout=30,
                   json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 101}],
                         "project": {"id": 1}})
    assert r.status_code == 200, r.text
    # malformed payload -> 400 from the feedback path, service keeps serving
    r = httpx.post(f"{url}/ls/webhook", headers=secret, timeout=30,
                   json={"action": "ANNOTATION_CREATED", "annotation": "x", "project": {"id": 1}})
    assert r.status_code == 400, r.text
    r = httpx.post(f"{url}/ls/webhook", headers={**secret, "Content-Type": "application/json"},
                   timeout=30, content=b"{nope")
    assert r.status_code == 400
    # a body not sent as JSON (what a browser may send cross-site) -> 415
    r = httpx.post(f"{url}/ls/webhook", headers=secret, timeout=30, content=b"{nope")
    assert r.status_code == 415, r.text


def test_ls_webhook_start_training_is_handed_off(server):
    """START_TRAINING (basic auth, from the ML connector) goes to the feedback trigger and the
    request returns at once. The test holds the project's feedback lock so no training starts."""
    from labelloop.trigger import feedback_lock

    with feedback_lock(server["settings"], 1, reason="test"):
        t0 = time.monotonic()
        r = httpx.post(f"{server['url']}/ls/webhook", headers=basic(), timeout=30, json={
            "action": "START_TRAINING",
            "project": {"id": 1, "title": "labelloop sentiment",
                        "min_annotations_to_start_training": 10},
            "model_version": server["v1"]})
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 5
        assert r.json()["feedback_run"] == "already-running"


# ---- hot reload (last: it moves the alias) -------------------------------------------------

def test_hot_reload_under_load(server):
    url, settings = server["url"], server["settings"]
    v1, v2 = server["v1"], server["v2"]
    registry.set_champion(settings, v1)
    assert admin_reload(url).status_code == 200
    results: list[tuple[float, float, int, str | None, set]] = []
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient, k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            payload = {"texts": [f"client {k} msg {i}", "second text"]} if k % 2 else \
                {"text": f"client {k} msg {i}"}
            t0 = time.monotonic()
            try:
                r = await client.post(f"{url}/classify", json=payload)
                status = r.status_code
                body = r.json() if status == 200 else {}
            except httpx.HTTPError:
                status, body = -1, {}
            versions = {p.get("model_version") for p in [body]} if body else set()
            results.append((t0, time.monotonic(), status, body.get("model_version"), versions))

    async def main() -> tuple[float, float]:
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(worker(client, k)) for k in range(8)]
            await asyncio.sleep(1.5)
            await asyncio.to_thread(registry.set_champion, settings, v2)
            t_move = time.monotonic()
            r = await asyncio.to_thread(admin_reload, url)
            t_swapped = time.monotonic()
            assert r.status_code == 200, r.text
            assert r.json()["current"] == v2
            await asyncio.sleep(1.5)
            # polling alone (no admin call) moves it back
            await asyncio.to_thread(registry.set_champion, settings, v1)
            t_back = time.monotonic()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if results and results[-1][3] == v1 and results[-1][0] > t_back:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
            return t_move, t_swapped

    t_move, t_swapped = asyncio.run(main())
    assert len(results) > 50
    failed = [r for r in results if r[2] != 200]
    assert not failed, f"{len(failed)} failed requests during reload: {failed[:5]}"
    versions = [r[3] for r in results]
    assert v1 in versions and v2 in versions
    # every request started after the swap completed was answered by v2 until the alias moved back
    after_swap = [r for r in results if t_swapped < r[0] and r[1] < t_swapped + 1.0]
    assert after_swap and all(r[3] == v2 for r in after_swap)
    before_move = [r for r in results if r[1] < t_move]
    assert before_move and all(r[3] == v1 for r in before_move)
    assert results[-1][3] == v1, "polling did not switch back to the champion"
