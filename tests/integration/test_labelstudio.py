"""annotation/ against a REAL Label Studio server (the session's `label_studio` fixture).

A tiny local HTTP server stands in for the labelloop service: it answers the ML-backend health /
setup calls and captures the webhook payloads Label Studio really sends, which are then fed to
`annotation.webhook.handle_event`, and compared with what the export pull stores.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from annotation import labelstudio as L
from annotation import studio, sync, webhook
from annotation.config import LabelConfigError, classification_config
from labelloop import trigger
from labelloop.labels_store import open_store, training_rows
from labelloop.settings import Settings
from labelloop.tasks import ClassificationTask, Prediction
from tests.helpers import free_port

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret"
BASIC = ("labelloop", "test-basic-pass")


class FakeService:
    """The service's /ls mount, just enough: /health, /setup (Basic auth), /webhook (captured)."""

    def __init__(self):
        self.events: list[dict] = []
        self.headers: list[dict] = []
        outer = self
        expected = "Basic " + base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.headers.get("Authorization") != expected:
                    return self._send(401, {"error": "auth"})
                self._send(200, {"status": "UP", "model_version": "1"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/webhook"):
                    outer.headers.append(dict(self.headers))
                    outer.events.append(json.loads(raw))
                    return self._send(200, {"ok": True})
                if self.headers.get("Authorization") != expected:
                    return self._send(401, {"error": "auth"})
                self._send(200, {"model_version": "1"})

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.time() + timeout
        while len(self.events) < n and time.time() < deadline:
            time.sleep(0.1)
        return list(self.events)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_service():
    svc = FakeService()
    yield svc
    svc.close()


def make_settings(label_studio, tmp_path, title=None, service_port=3000, **extra):
    overrides = label_studio.studio_overrides()
    overrides["studio"]["project_title"] = title or f"test {uuid.uuid4().hex[:8]}"
    overrides["studio"].update(extra.pop("studio", {}))
    return Settings(
        data_dir=str(tmp_path), **overrides,
        serving={"port": service_port, "webhook_secret": SECRET,
                 "ls_basic_auth_user": BASIC[0], "ls_basic_auth_password": BASIC[1]},
        **extra,
    )


class FakeClassifier:
    """Deterministic 'model' for import tests: probabilities from the text length."""

    def __init__(self, labels=("negative", "neutral", "positive"), version="7"):
        self.task = ClassificationTask(name="sentiment", labels=tuple(labels))
        self.version = version

    def predict(self, texts):
        out = []
        for t in texts:
            top = (len(t) % 10) / 10 * 0.6 + 0.34  # 0.34 .. 0.88
            rest = (1 - top) / 2
            probs = {"negative": rest, "neutral": rest, "positive": top}
            out.append(Prediction(label="positive", score=top, probabilities=probs))
        return out


def test_server_status_and_token(label_studio, tmp_path):
    s = make_settings(label_studio, tmp_path)
    assert studio.is_healthy(label_studio.url)
    client = L.connect(s)
    assert client.users.whoami().email == label_studio.username


def test_bad_token_and_unreachable_create_nothing(label_studio, tmp_path):
    good = make_settings(label_studio, tmp_path)
    before = len(list(L.connect(good).projects.list()))
    bad = good.model_copy(deep=True)
    bad.studio.api_token = "0" * 40
    with pytest.raises(L.StudioConnectionError, match="refused the API token"):
        L.setup(bad, ml_backend=False, progress=lambda m: None)
    gone = good.model_copy(deep=True)
    gone.studio.port = free_port()
    with pytest.raises(L.StudioConnectionError, match="unreachable"):
        L.setup(gone, ml_backend=False, progress=lambda m: None)
    nosecret = good.model_copy(deep=True)
    nosecret.serving.webhook_secret = ""
    with pytest.raises(LabelConfigError, match="webhook_secret"):
        L.setup(nosecret, ml_backend=False, progress=lambda m: None)
    assert len(list(L.connect(good).projects.list())) == before


def test_setup_is_idempotent_and_connects_backend(label_studio, tmp_path, fake_service, monkeypatch):
    s = make_settings(label_studio, tmp_path, service_port=fake_service.port)
    first = L.setup(s, progress=lambda m: None)
    assert first["created"] and first["webhook"]["created"] and first["ml_backend"]["created"]
    second = L.setup(s, progress=lambda m: None)
    assert second["project"] == first["project"]
    assert not second["created"] and second["updated"] == []
    assert not second["webhook"]["created"] and not second["webhook"]["updated"]
    assert not second["ml_backend"]["created"]
    client = L.connect(s)
    assert len([p for p in client.projects.list() if p.title == s.studio.project_title]) == 1
    assert len(client.webhooks.list(project=str(first["project"]))) == 1
    assert len(client.ml.list(project=first["project"])) == 1
    hook = client.webhooks.list(project=str(first["project"]))[0]
    assert hook.headers == {"X-Labelloop-Secret": SECRET}

    # With a live ML backend, LS leaves `annotation.prediction` empty (the project's
    # model_version is the backend's title): the pull still finds the prediction shown.
    pid = first["project"]
    client.projects.import_tasks(id=pid, request=[
        {"data": {"text": "live backend task"},
         "predictions": [L.prediction_for("positive", 0.55, "7")]}])
    task = [t for t in client.tasks.list(project=pid, fields="all")
            if t.data["text"] == "live backend task"][0]
    pred = task.predictions[0] if isinstance(task.predictions[0], dict) else task.predictions[0].dict()
    client.annotations.create(id=task.id, result=_choice("negative", "prediction-changed"),
                              parent_prediction=pred["id"])
    sync.sync_project(s, pid, client)
    row = training_rows(s).iloc[0]
    assert (row["label"], row["shown_label"], row["model_version"], row["changed"]) == (
        "negative", "positive", "7", 1)

    # "Start training" in Label Studio reaches the service's /webhook as START_TRAINING
    start = len(fake_service.events)
    client.ml.train(id=first["ml_backend"]["id"])
    event = fake_service.wait_for(start + 1)[start]
    assert event["action"] == "START_TRAINING" and event["project"]["id"] == first["project"]
    assert fake_service.headers[start]["Authorization"].startswith("Basic ")
    calls = []
    monkeypatch.setattr(trigger, "request_feedback_run", lambda s_, p, r: calls.append(p) or True)
    assert webhook.handle_event(s, event)["feedback_run"] == "started"
    assert calls == [first["project"]]


def test_project_with_other_labels_is_refused(label_studio, tmp_path):
    s = make_settings(label_studio, tmp_path)
    client = L.connect(s)
    other = ClassificationTask(name="x", labels=("spam", "ham"))
    client.projects.create(title=s.studio.project_title, label_config=classification_config(other))
    with pytest.raises(LabelConfigError, match="do not match the model"):
        L.ensure_project(s, client)
    # the model's labels decide at import time too
    s2 = make_settings(label_studio, tmp_path / "b")
    pid = L.ensure_project(s2, client).id
    with pytest.raises(LabelConfigError):
        L.import_pool(s2, texts=["a text"], project_id=pid, client=client,
                      classifier=FakeClassifier(labels=("a", "b", "c")))
    # without a project yet: refused before anything is created
    s3 = make_settings(label_studio, tmp_path / "c")
    with pytest.raises(LabelConfigError, match="predicts"):
        L.import_pool(s3, texts=["a text"], client=client,
                      classifier=FakeClassifier(labels=("a", "b", "c")))
    assert L.find_project(client, s3.studio.project_title) is None


def test_import_attaches_predictions_least_certain_first(label_studio, tmp_path):
    # The least-certain-first ordering (the default, `diverse`, needs the model's embeddings).
    s = make_settings(label_studio, tmp_path, studio={"pool_size": 6, "ordering": "uncertainty"})
    client = L.connect(s)
    pid = L.ensure_project(s, client).id
    texts = [f"text number {'x' * i}" for i in range(10)]
    report = L.import_pool(s, texts=texts, project_id=pid, client=client, classifier=FakeClassifier())
    assert report["imported"] == 6 and report["model_version"] == "7"
    tasks = sorted(client.tasks.list(project=pid, fields="all"), key=lambda t: t.id)
    assert len(tasks) == 6
    scores = []
    for t in tasks:
        assert len(t.predictions) == 1
        pred = t.predictions[0]
        pred = pred if isinstance(pred, dict) else pred.dict()
        assert pred["model_version"] == "7"
        assert pred["result"][0]["value"]["choices"] == ["positive"]
        scores.append(pred["score"])
    assert scores == sorted(scores)  # least certain first (import order = task order)
    assert max(scores) <= sorted(FakeClassifier().predict(texts)[i].score for i in range(10))[5]
    # again: the 6 imported texts are skipped, the 4 others come in
    again = L.import_pool(s, texts=texts, project_id=pid, client=client, classifier=FakeClassifier())
    assert again["imported"] == 4 and again["skipped_existing_or_empty"] == 6
    assert L.import_pool(s, texts=texts, project_id=pid, client=client,
                         classifier=FakeClassifier())["imported"] == 0


def test_imported_tasks_sort_numerically_and_show_their_score(label_studio, tmp_path):
    """What the UI needs: the project's model_version is the predictions' (so the "Prediction
    score" column is filled), and the Data Manager sorts rank/uncertainty/margin as numbers."""
    from annotation.config import HINT_KEY

    s = make_settings(label_studio, tmp_path, studio={"pool_size": 12, "ordering": "uncertainty"})
    client = L.connect(s)
    pid = L.ensure_project(s, client).id
    texts = [f"numeric sort {'y' * i}" for i in range(12)]
    L.import_pool(s, texts=texts, project_id=pid, client=client, classifier=FakeClassifier())
    assert client.projects.get(id=pid).model_version == "7"
    tasks = list(client.tasks.list(project=pid, fields="all"))
    assert all(t.predictions_score is not None and 0 < t.predictions_score < 1 for t in tasks)
    data = [t.data for t in tasks]
    assert all(type(d["rank"]) is int and type(d["uncertainty"]) is float
               and type(d["margin"]) is float for d in data)
    assert all(d[HINT_KEY].startswith("Model v7's guess: positive") for d in data)

    # The tab import_pool made types the three columns Number, so Label Studio casts them to
    # numbers when sorting (as text, descending would give 9, 8, ..., 2, 11, 10, 1, 0; SQLite
    # happens to compare JSON numbers as numbers, PostgreSQL's ->> compares text).
    (default,) = client.views.list(project=pid)
    assert {f"tasks:data.{n}" for n in L.NUMERIC_FIELDS} <= {
        k for k, v in default.data["columnsDisplayType"].items() if v == "Number"}
    client.views.update(id=str(default.id), project=pid,
                        data={**default.data, "ordering": ["-tasks:data.rank"]})
    ranks = [t.data["rank"] for t in client.tasks.list(project=pid, view=default.id)]
    assert ranks == list(range(11, -1, -1))  # the tab's ordering, as the UI asks: by view id
    assert L.ensure_numeric_columns(client, pid) == 0  # idempotent


def test_import_with_the_real_champion(label_studio, tmp_path):
    """The champion from the MLflow registry predicts a pool from the dataset's train split
    (asked for: pool.from_training_split)."""
    from tests.helpers import register_untrained_version

    s = make_settings(label_studio, tmp_path, studio={"pool_size": 8, "ordering": "uncertainty"},
                      pool={"from_training_split": True})
    version = str(register_untrained_version(s, seed=1))
    report = L.import_pool(s)  # creates the project, the pool, champion predictions
    assert report["imported"] == 8 and report["model_version"] == version
    client = L.connect(s)
    tasks = sorted(client.tasks.list(project=report["project"], fields="all"), key=lambda t: t.id)
    preds = [t.predictions[0] if isinstance(t.predictions[0], dict) else t.predictions[0].dict()
             for t in tasks]
    assert {p["model_version"] for p in preds} == {version}
    assert [p["score"] for p in preds] == sorted(p["score"] for p in preds)
    assert all(p["result"][0]["value"]["choices"][0] in s.task.labels for p in preds)

    # a new champion: its predictions go to the pending tasks (not to annotated ones), once
    client.annotations.create(id=tasks[0].id, result=_choice("neutral"))
    new_version = str(register_untrained_version(s, seed=2))
    pushed = L.push_predictions(s)
    assert pushed == {"project": report["project"], "model_version": new_version, "pushed": 7}
    assert L.push_predictions(s)["pushed"] == 0
    tasks = sorted(client.tasks.list(project=report["project"], fields="all"), key=lambda t: t.id)
    versions = [{(p if isinstance(p, dict) else p.dict())["model_version"] for p in t.predictions}
                for t in tasks]
    assert versions[0] == {version} and all(v == {version, new_version} for v in versions[1:])
    # The page's header sentence and the sort columns follow the new model on pending tasks
    # (they named the first version before); the annotated task keeps what it was shown.
    from annotation.config import HINT_KEY

    def new_prediction(t):
        return next(p if isinstance(p, dict) else p.dict() for p in t.predictions
                    if (p if isinstance(p, dict) else p.dict())["model_version"] == new_version)

    assert tasks[0].data[HINT_KEY].startswith(f"Model v{version}'s guess: ")
    for t in tasks[1:]:
        p = new_prediction(t)
        label = p["result"][0]["value"]["choices"][0]
        assert t.data[HINT_KEY].startswith(f"Model v{new_version}'s guess: {label}, "), t.data
        assert t.data["uncertainty"] == pytest.approx(1 - p["score"], abs=1e-5)
        assert type(t.data["rank"]) is int and t.data["text"]
    assert sorted(t.data["rank"] for t in tasks) == list(range(8))  # ranks kept as imported
    # A push cut short after the predictions (a task still naming the old version) is finished
    # by the next one, which adds no second prediction.
    client.tasks.update(id=str(tasks[3].id), data={**tasks[3].data, HINT_KEY: "Model v1's guess: x"})
    assert L.push_predictions(s)["pushed"] == 0
    healed = client.tasks.get(id=tasks[3].id)
    assert healed.data[HINT_KEY].startswith(f"Model v{new_version}'s guess: ")
    assert len(healed.predictions) == 2


def _choice(label, origin=None):
    item = {"from_name": "label", "to_name": "text", "type": "choices",
            "value": {"choices": [label]}}
    if origin:
        item["origin"] = origin
    return [item]


def test_annotations_sync_and_webhooks_agree(label_studio, tmp_path, fake_service):
    s = make_settings(label_studio, tmp_path / "pull", service_port=fake_service.port)
    client = L.connect(s)
    pid = L.ensure_project(s, client).id
    L.ensure_webhook(s, pid, client)
    texts = ["great stuff", "awful day", "it is a table", "meh whatever", "odd one", "skip me"]
    client.projects.import_tasks(id=pid, request=[
        {"data": {"text": t}, "predictions": [L.prediction_for("positive", 0.5, "7")]}
        for t in texts])
    tasks = {t.data["text"]: t for t in client.tasks.list(project=pid, fields="all")}

    def pred_id(text):
        p = tasks[text].predictions[0]
        return p["id"] if isinstance(p, dict) else p.id

    start = len(fake_service.events)
    ann = client.annotations.create
    a1 = ann(id=tasks["great stuff"].id, result=_choice("positive", "prediction"),
             parent_prediction=pred_id("great stuff"))
    a2 = ann(id=tasks["awful day"].id, result=_choice("negative", "prediction-changed"),
             parent_prediction=pred_id("awful day"))
    a3 = ann(id=tasks["it is a table"].id, result=_choice("positive"))
    a4 = ann(id=tasks["meh whatever"].id, result=_choice("neutral"))
    a5 = ann(id=tasks["odd one"].id, result=_choice("sarcastic"))  # outside the label set
    a6 = ann(id=tasks["skip me"].id, result=[], was_cancelled=True)
    time.sleep(0.05)
    client.annotations.update(id=a3.id, result=_choice("neutral"))
    client.annotations.delete(id=a4.id)
    events = fake_service.wait_for(start + 8)[start:]
    actions = [e["action"] for e in events]
    assert actions.count("ANNOTATION_CREATED") == 6
    assert "ANNOTATION_UPDATED" in actions and "ANNOTATIONS_DELETED" in actions
    assert all(h.get("X-Labelloop-Secret") == SECRET for h in fake_service.headers[start:])

    expected = {"great stuff": "positive", "awful day": "negative", "it is a table": "neutral"}

    # 1. the export pull
    first = sync.sync_project(s, pid, client)
    assert first["outcomes"].get("inserted") == 5  # a4 was deleted before the first pull
    skipped = {d["annotation"]: d["reason"] for d in first["skipped"]}
    assert "bad label" in skipped[a5.id] and "cancelled" in skipped[a6.id]
    rows = training_rows(s)
    assert dict(zip(rows["text"], rows["label"])) == expected
    prov = rows.set_index("text")
    assert prov.loc["awful day", "model_version"] == "7"
    assert prov.loc["awful day", "shown_label"] == "positive"
    assert prov.loc["awful day", "changed"] == 1 and prov.loc["great stuff", "changed"] == 0
    assert prov.loc["awful day", "task_id"] == str(tasks["awful day"].id)
    assert prov.loc["awful day", "annotation_id"] == str(a2.id)
    second = sync.sync_project(s, pid, client)
    assert second["outcomes"] == {"unchanged": 5} and second["deleted"] == 0

    # 2. the webhooks, applied to a fresh store, twice: same rows, replays change nothing
    hook = make_settings(label_studio, tmp_path / "hook")
    for e in events:
        webhook.handle_event(hook, copy.deepcopy(e))
    hook_rows = training_rows(hook)
    assert dict(zip(hook_rows["text"], hook_rows["label"])) == expected
    with open_store(hook) as st:
        seq = st.current_seq()
    for e in events:
        webhook.handle_event(hook, copy.deepcopy(e))
    with open_store(hook) as st:
        assert st.current_seq() == seq
    # ... and the pull after the webhooks finds nothing new
    hook.studio.project_title = s.studio.project_title
    after = sync.sync_project(hook, pid, client)
    assert set(after["outcomes"]) == {"unchanged"} and after["deleted"] == 0

    # 3. pull first, then the (late) webhooks: nothing changes either
    late = make_settings(label_studio, tmp_path / "late")
    sync.sync_project(late, pid, client)
    before = training_rows(late)
    outs = [(e, webhook.handle_event(late, copy.deepcopy(e))) for e in events]
    # a4 was created and deleted before the pull, which never saw it: its late create inserts
    # it and its late delete removes it again; every other event changes nothing.
    allowed = {"unchanged", "stale", "gone"}
    for e, o in outs:
        if e.get("annotation", {}).get("id") == a4.id or e["action"] == "ANNOTATIONS_DELETED":
            continue
        assert set(o.get("outcomes", {})) <= allowed, (e["action"], o)
    assert training_rows(late).equals(before)
    assert dict(zip(training_rows(late)["text"], training_rows(late)["label"])) == expected

    # 4. a deletion seen only by the pull (webhook missed): the next pull removes the row
    client.annotations.delete(id=a1.id)
    third = sync.sync_project(s, pid, client)
    assert third["deleted"] == 1
    assert "great stuff" not in set(training_rows(s)["text"])


def test_agreement_is_logged_to_mlflow(label_studio, tmp_path):
    import mlflow

    from annotation.agreement import agreement_by_version, log_agreement
    from labelloop.labels_store import LabelRecord

    s = make_settings(label_studio, tmp_path)
    with open_store(s) as st:
        for i, (label, shown, version) in enumerate([
            ("positive", "positive", "1"), ("negative", "positive", "1"),
            ("neutral", "neutral", "2"), ("neutral", "neutral", "2"),
        ]):
            st.upsert(LabelRecord(source="label-studio", project="1", annotation_id=str(i),
                                  text=f"t{i}", label=label, shown_label=shown,
                                  model_version=version, updated_at="2026-01-01T00:00:00Z"))
    table = agreement_by_version(s)
    assert table.set_index("model_version")["agreement"].to_dict() == {"1": 0.5, "2": 1.0}
    out = log_agreement(s)
    run = mlflow.MlflowClient(tracking_uri=s.tracking_uri).get_run(out["run_id"])
    assert run.data.metrics["agreement/v1"] == 0.5 and run.data.metrics["agreement/v2"] == 1.0


def test_cli_status_setup_sync(label_studio, tmp_path):
    """`labelloop studio status` and `labelloop annotate setup|sync` as a user runs them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from tests.helpers import REPO_ROOT

    server_data = Path(label_studio.data_dir).parent
    cfg = tmp_path / "cfg.yaml"
    ov = label_studio.studio_overrides()["studio"]
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(server_data),
        "studio": {"port": ov["port"], "project_title": f"cli {uuid.uuid4().hex[:6]}",
                   **({"venv": os.environ["LABELLOOP_TEST_LS_VENV"]}
                      if os.environ.get("LABELLOOP_TEST_LS_VENV") else {})},
        "serving": {"port": free_port()},  # no service there: the ML backend is skipped
    }))
    env = {**os.environ, "LABELLOOP__SERVING__WEBHOOK_SECRET": "s"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "labelloop.cli", *args, "-c", str(cfg)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)

    status = cli("studio", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["healthy"] is True
    setup = cli("annotate", "setup")
    assert setup.returncode == 0, setup.stderr
    assert "ML backend not connected" in setup.stderr
    assert json.loads(setup.stdout)["created"] is True
    synced = cli("annotate", "sync")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["annotations"] == 0
    env["LABELLOOP__STUDIO__API_TOKEN"] = "f" * 40
    bad = cli("annotate", "sync")
    assert bad.returncode == 2 and "refused the API token" in bad.stderr


def test_kill_9_during_sync_leaves_the_store_whole(label_studio, tmp_path):
    """A sync killed at any moment (export wait, conversion, the write) leaves the labels store
    as it was before or as it is after, never in between; the next sync makes it exact."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    import yaml

    from tests.helpers import REPO_ROOT

    s = make_settings(label_studio, tmp_path)
    client = L.connect(s)
    pid = L.ensure_project(s, client).id
    labels = ["negative", "neutral", "positive"]
    client.projects.import_tasks(id=pid, request=[{"data": {"text": f"kill sync {i}"}}
                                                  for i in range(60)])
    tasks = sorted(client.tasks.list(project=pid, fields="all"), key=lambda t: t.id)
    for i, t in enumerate(tasks[:30]):
        client.annotations.create(id=t.id, result=_choice(labels[i % 3]))
    sync.sync_project(s, pid)  # the "before" state: 30 labels
    before = {r["text"]: r["label"] for _, r in training_rows(s).iterrows()}
    assert len(before) == 30
    for i, t in enumerate(tasks[30:]):
        client.annotations.create(id=t.id, result=_choice(labels[(i + 1) % 3]))
    cfg = tmp_path / "settings.yaml"
    cfg.write_text(yaml.safe_dump({**s.model_dump(mode="json"), "data_dir": str(s.data_path)}))
    script = ("import sys; from labelloop.settings import load_settings; from annotation import "
              f"sync; sync.sync_project(load_settings(sys.argv[1]), {pid})")
    for delay in (0.3, 0.8, 1.5, 2.5, 4.0):
        proc = subprocess.Popen([sys.executable, "-c", script, str(cfg)], cwd=str(REPO_ROOT),
                                start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(str(s.labels_path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        now = {r["text"]: r["label"] for _, r in training_rows(s).iterrows()}
        assert len(now) in (30, 60), (delay, len(now))  # all of one export, or none of it
        assert all(now[t] == lab for t, lab in before.items())
    sync.sync_project(s, pid)
    final = training_rows(s)
    assert len(final) == 60 and final["text"].is_unique
