"""Argilla as the loop's annotation tool, with the real servers: the session's Argilla
(`argilla_server`: argilla-server 2.8 + noida-db) and the labelloop service as a real process
(`bentoml serve`, through pipelines.demo), receiving Argilla's signed webhooks.

Dataset setup -> records with the champion's suggestions -> an annotator (not the owner) answers
through Argilla's REST API as the UI does (keeps, corrections, an update, a discard, a draft, a
deletion) -> the webhooks land in the labels store -> the same deliveries replayed in reverse
order change nothing -> a pull sync agrees, and alone gives the same store -> bad deliveries are
refused or skipped -> `labelloop feedback` retrains from the Argilla answers, promotes, and the
unanswered records get the new version's suggestions in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pandas as pd
import pytest

from labelloop import labels_store, registry
from labelloop.settings import load_settings
from tests.helpers import demo_service, free_port, sample_corpus
from tests.integration.test_loop_e2e import register_constant_champion

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ADMIN = "argilla-e2e-admin"
POOL = 12


class Capture:
    """A second webhook receiver: keeps Argilla's raw deliveries (body and headers) to replay."""

    def __init__(self):
        self.deliveries: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.deliveries.append((dict(self.headers), raw))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def loop(argilla_server, tmp_path_factory):
    from annotation import argilla as A
    from pipelines import demo

    root = tmp_path_factory.mktemp("argilla-loop")
    sample_corpus(root, 300, seed=5)
    cfg = {
        "data_dir": str(root / "data"),
        "dataset": {"path": str(root / "small.csv"), "encoding": "utf-8"},
        "model": {"max_length": 32},
        "task": {"display_names": {"positive": "Positive :)"}},  # shown, never stored
        "training": {"method": "full", "learning_rate": 1e-4, "batch_size": 16, "max_steps": 6},
        "evaluation": {"sample_predictions": 3},
        "annotation": {"tools": ["argilla"]},
        "argilla": {**argilla_server.argilla_overrides()["argilla"],
                    "dataset": f"e2e-{uuid.uuid4().hex[:8]}", "pool_size": POOL},
        "studio": {"ordering": "margin"},
        "serving": {"port": free_port(), "poll_interval_s": 2.0, "admin_token": ADMIN},
        # A short, strong warm start (about 8 steps: the turn's training is not what this tests)
        # moves the constant champion's head; the fixed-margin rule then promotes any model
        # that is not constant (the paired rule is tested with Label Studio, test_loop_e2e.py).
        "feedback": {"min_new_labels": 3, "warm_start": {
            "learning_rate": 5e-3, "epochs": 2, "batch_size": 16, "replay_rows": 48,
            "replay_per_new_label": 1, "new_label_repeats": 2}},
        "promotion": {"rule": "margin", "margin": 0.0},
    }
    with demo_service(root, cfg, lambda s: register_constant_champion(s, "positive")) as (
            settings_file, settings, champion):
        client = A.connect(settings)
        out = demo.setup_argilla(settings)
        capture = Capture()
        import argilla as rg

        from annotation.argilla_webhook import EVENTS

        spy = rg.Webhook(url=f"http://127.0.0.1:{capture.port}/hook", events=EVENTS,
                         _client=client).create()
        try:
            yield {"root": root, "settings_file": settings_file, "settings": settings,
                   "champion": champion, "client": client, "dataset": out["dataset"],
                   "setup": out, "capture": capture, "spy": spy}
        finally:
            try:
                spy.delete()
            except Exception:  # noqa: BLE001
                pass


def annotator(settings, client):
    """A new annotator-role user of the workspace, and a Bearer token as the UI gets one."""
    import argilla as rg

    name = f"ann-{uuid.uuid4().hex[:6]}"
    user = rg.User(username=name, password="annotator-pass", role="annotator", client=client).create()
    client.workspaces(settings.argilla.workspace).add_user(user)
    base = f"http://{settings.argilla.host}:{settings.argilla.port}"
    r = httpx.post(f"{base}/api/v1/token", data={"username": name, "password": "annotator-pass"})
    assert r.status_code == 201, r.text
    return name, httpx.Client(base_url=base, timeout=30,
                              headers={"Authorization": f"Bearer {r.json()['access_token']}"})


def queue(ui, dataset_id, status="pending"):
    """The annotator's records, as the UI's annotation page asks for them."""
    r = ui.post(f"/api/v1/me/datasets/{dataset_id}/records/search",
                params={"include": "responses,suggestions", "limit": 50},
                json={"filters": {"and": [{"type": "terms", "scope": {"entity": "response",
                                                                       "property": "status"},
                                           "values": [status]}]}} if status else {})
    assert r.status_code == 200, r.text
    return [item["record"] for item in r.json()["items"]]


def answer(ui, record_id, label, status="submitted"):
    r = ui.post(f"/api/v1/records/{record_id}/responses",
                json={"values": {"label": {"value": label}}, "status": status})
    assert r.status_code == 201, r.text
    return r.json()


def other(label):
    return "negative" if label != "negative" else "neutral"


def wait_store(settings, dataset_id, check, timeout=40.0):
    deadline = time.time() + timeout
    while True:
        with labels_store.open_store(settings) as store:
            rows = store.rows(source="argilla", project=dataset_id)
        if check(rows) or time.time() > deadline:
            return rows
        time.sleep(0.3)


def final_state(settings, dataset_id):
    with labels_store.open_store(settings) as store:
        rows = store.rows(source="argilla", project=dataset_id)
        seq = store.current_seq()
    cols = ["annotation_id", "task_id", "text", "label", "status", "reason", "annotator",
            "model_version", "shown_label", "changed", "updated_ts"]
    return rows[cols].sort_values("annotation_id").reset_index(drop=True), seq


def test_argilla_answers_reach_the_store_exactly_through_webhooks_and_sync(loop, tmp_path):
    from annotation import argilla as A
    from annotation.agreement import agreement_by_version
    from annotation.argilla_webhook import read_hook
    from standardwebhooks import Webhook

    s, client, dataset_id, champion = loop["settings"], loop["client"], loop["dataset"], loop["champion"]
    # Setup is idempotent: the same dataset, the same webhook, no second record.
    again = A.setup(s, progress=lambda m: None)
    assert again["dataset"] == dataset_id and not again["created"]
    assert not again["webhook"]["created"]
    records = A.list_records(client, dataset_id)
    assert len(records) == POOL
    # The label question shows task.display_names; its values stay the labels.
    questions = client.http_client.get(f"/api/v1/datasets/{dataset_id}/questions").json()["items"]
    (label_q,) = [q for q in questions if q["name"] == A.LABEL_QUESTION]
    assert {o["value"]: o["text"] for o in label_q["settings"]["options"]} == {
        "negative": "negative", "neutral": "neutral", "positive": "Positive :)"}
    # (Logging the same texts again: the pool skips them as labelled corpus texts now; that a
    # record is updated in place, never duplicated, is checked after the push below.)
    for r in records:  # the champion's suggestion, with its version as the agent
        (sug,) = r["suggestions"]
        assert sug["agent"] == champion and sug["value"] == "positive" and 0 < sug["score"] <= 1
        assert r["metadata"]["model_version"] == champion
        assert r["metadata"]["uncertainty"] == pytest.approx(1 - sug["score"], abs=1e-5)

    name, ui = annotator(s, client)
    todo = queue(ui, dataset_id)
    assert len(todo) == POOL and all(r["suggestions"][0]["agent"] == champion for r in todo)
    keep, change, update, discard, draft, delete, *rest = todo
    suggested = keep["suggestions"][0]["value"]
    answer(ui, keep["id"], suggested)
    answer(ui, change["id"], other(suggested))
    first = answer(ui, update["id"], suggested)
    time.sleep(1.1)
    r = ui.put(f"/api/v1/responses/{first['id']}",
               json={"values": {"label": {"value": "neutral"}}, "status": "submitted"})
    assert r.status_code == 200, r.text
    answer(ui, discard["id"], suggested, status="discarded")
    answer(ui, draft["id"], "neutral", status="draft")
    gone = answer(ui, delete["id"], "negative")
    time.sleep(0.5)
    assert ui.delete(f"/api/v1/responses/{gone['id']}").status_code == 200
    # Values outside the label set never get past Argilla's own API.
    assert ui.post(f"/api/v1/records/{rest[0]['id']}/responses",
                   json={"values": {"label": {"value": "sarcastic"}},
                         "status": "submitted"}).status_code == 422

    expected_active = {keep["id"]: suggested, change["id"]: other(suggested),
                       update["id"]: "neutral"}

    def settled(rows):
        active = rows[rows["status"] == "active"]
        return (dict(zip(active["task_id"], active["label"])) == expected_active
                and set(rows.loc[rows["status"] == "invalid", "task_id"]) == {discard["id"]}
                and set(rows.loc[rows["status"] == "deleted", "task_id"]) == {delete["id"]})

    rows = wait_store(s, dataset_id, settled)
    assert settled(rows), rows[["task_id", "label", "status", "via"]].to_string()
    assert set(rows["via"]) == {"webhook"}  # nothing synced yet: the webhooks did all this
    active = rows[rows["status"] == "active"].set_index("task_id")
    assert set(active["annotator"]) == {name}
    assert set(active["model_version"]) == {champion} and set(active["shown_label"]) == {suggested}
    assert active.loc[keep["id"], "changed"] == 0 and active.loc[change["id"], "changed"] == 1
    assert rows.loc[rows["status"] == "invalid", "reason"].item() == "discarded by the annotator"
    assert draft["id"] not in set(rows["task_id"])  # drafts are not labels
    before, seq = final_state(s, dataset_id)

    # Replays: every delivery Argilla made (to a second webhook, same bodies), signed again with
    # the service's webhook secret under its original message id, sent in reverse order, twice.
    deadline = time.time() + 20
    while len(loop["capture"].deliveries) < 9 and time.time() < deadline:
        time.sleep(0.2)
    hook = Webhook(read_hook(s)["secret"])
    url = f"http://127.0.0.1:{s.serving.port}/argilla/webhook"
    replayed = 0
    for _ in range(2):
        for headers, body in reversed(loop["capture"].deliveries):
            msg_id = headers.get("webhook-id") or headers.get("Webhook-Id")
            now = datetime.now(timezone.utc)
            signed = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                      "webhook-signature": hook.sign(msg_id, now, body.decode()),
                      "content-type": "application/json"}
            r = httpx.post(url, content=body, headers=signed, timeout=30)
            assert r.status_code == 200, r.text
            replayed += 1
    assert replayed >= 18
    after, seq_after = final_state(s, dataset_id)
    pd.testing.assert_frame_equal(before, after)
    assert seq_after == seq  # not one write

    # The pull sync agrees with the webhooks: nothing to write; alone it gives the same store.
    report = A.sync_dataset(s)
    assert set(report["outcomes"]) <= {"unchanged"} and report["deleted"] == 0, report
    assert final_state(s, dataset_id)[1] == seq
    fresh = load_settings(str(loop["settings_file"]), overrides={"data_dir": str(tmp_path / "d")})
    A.sync_dataset(fresh)
    A.sync_dataset(fresh)  # idempotent
    alone, _ = final_state(fresh, dataset_id)
    live = before[before["status"] != "deleted"].drop(columns=["updated_ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.drop(columns=["updated_ts"]), live, check_dtype=False)

    # Model/annotator agreement per model version, from the Argilla answers.
    table = agreement_by_version(s, source="argilla").set_index("model_version")
    assert table.loc[champion, "annotations"] == 3 and table.loc[champion, "kept"] == 1

    # Bad deliveries: refused or skipped, and nothing stored changes.
    base_event = json.loads(next(b for h, b in loop["capture"].deliveries
                                 if json.loads(b)["type"] == "response.created"))

    def send(event, sign=True, headers=None, when=None):
        body = json.dumps(event) if not isinstance(event, bytes) else event.decode()
        msg_id = f"msg_{uuid.uuid4().hex}"
        when = when or datetime.now(timezone.utc)
        h = {"content-type": "application/json", "webhook-id": msg_id,
             "webhook-timestamp": str(int(when.timestamp()))}
        if sign:
            h["webhook-signature"] = hook.sign(msg_id, when, body)
        h.update(headers or {})
        return httpx.post(url, content=body, headers=h, timeout=30)

    assert send(base_event, sign=False).status_code == 401
    wrong = send(base_event, headers={"webhook-signature": "v1,AAAA" + "A" * 40})
    assert wrong.status_code == 403 and "signature" in wrong.json()["error"]
    stale = send(base_event, when=datetime.now(timezone.utc) - timedelta(minutes=10))
    assert stale.status_code == 403
    assert send(b"{not json").status_code == 400
    assert send({"type": "response.created", "data": {"id": "x"}}).status_code == 400
    foreign = json.loads(json.dumps(base_event))
    foreign["data"]["record"]["dataset"]["id"] = str(uuid.uuid4())
    r = send(foreign)
    assert r.status_code == 200 and r.json()["skipped"]
    assert final_state(s, dataset_id)[1] == seq  # none of these wrote anything
    # A signed response with a value outside the label set, or none: kept as not trainable.
    for i, values in enumerate(({"label": {"value": "sarcastic"}}, {})):
        bad = json.loads(json.dumps(base_event))
        bad["data"].update(id=str(uuid.uuid4()), values=values)
        bad["data"]["record"]["id"] = rest[1 + i]["id"]
        r = send(bad)
        assert r.status_code == 200 and r.json()["skipped"], r.text
    rows = wait_store(s, dataset_id, lambda r: True)
    invalid = rows[rows["status"] == "invalid"]
    assert invalid["reason"].str.startswith("bad label").sum() == 1
    assert (invalid["reason"] == "empty response (no label given)").sum() == 1
    now_active = rows[rows["status"] == "active"]
    assert dict(zip(now_active["task_id"], now_active["label"])) == expected_active


def test_feedback_turn_retrains_on_argilla_answers_and_pushes_new_suggestions(loop):
    from annotation import argilla as A

    s, client, dataset_id, champion = loop["settings"], loop["client"], loop["dataset"], loop["champion"]
    name, ui = annotator(s, client)
    for i, r in enumerate(queue(ui, dataset_id, status=None)[:POOL]):
        if not r["responses"] and i % 2 == 0:  # half of the unanswered ones: corrections
            answer(ui, r["id"], ("negative", "neutral")[i % 4 // 2])
    wait_store(s, dataset_id, lambda rows: (rows["annotator"] == name).sum() >= 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    # What the demo tells an Argilla user to run after a few answers (Argilla has no Start
    # training button): a turn asked to train on them.
    r = subprocess.run([sys.executable, "-m", "labelloop.cli", "feedback", "--train", "--config",
                        str(loop["settings_file"])], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "sync: argilla: dataset" in out and "new version" in out, out[-3000:]
    assert "you asked for training" in out, out[-3000:]
    new = str(registry.get_champion(s).version)
    assert new != champion, out[-3000:]  # any trained model beats the constant champion
    records = A.list_records(client, dataset_id)
    assert len(records) == POOL  # updated in place, never duplicated
    pending = [r for r in records if not r["responses"]]
    answered = [r for r in records if r["responses"]]
    assert pending and answered
    assert all({x["agent"] for x in r["suggestions"]} == {new} and
               r["metadata"]["model_version"] == new for r in pending)
    # Answered records keep the suggestion their annotator saw.
    assert all(r["metadata"]["model_version"] == champion for r in answered)
    assert f"argilla: {len(pending)} pending item(s) got version {new}" in out, out[-3000:]


def test_bad_input_unreachable_wrong_key_mismatching_dataset(argilla_server, tmp_path):
    """One clear error each, and nothing created or stored."""
    from annotation import argilla as A
    from labelloop.settings import Settings
    from labelloop.tasks import ClassificationTask

    cfg = argilla_server.argilla_overrides()["argilla"]
    name = f"bad-{uuid.uuid4().hex[:8]}"
    s = Settings(data_dir=str(tmp_path), argilla={**cfg, "dataset": name})
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env["LABELLOOP__DATA_DIR"] = str(tmp_path)

    def cli(*args, **extra):
        return subprocess.run([sys.executable, "-m", "labelloop.cli", "argilla", *args],
                              env={**env, **extra}, cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    down = cli("setup", LABELLOOP__ARGILLA__PORT=str(free_port()),
               LABELLOOP__ARGILLA__API_KEY="k" * 20)
    assert down.returncode == 2 and "Argilla is unreachable" in down.stderr
    assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
    with pytest.raises(A.ArgillaConnectionError, match="refused the API key"):
        A.setup(Settings(data_dir=str(tmp_path), argilla={**cfg, "dataset": name,
                                                           "api_key": "not-the-key-123"}))
    client = A.connect(s)
    assert A.find_dataset(client, s) is None  # neither created anything

    # A dataset asking for other labels than the model's: refused before any record is logged.
    A.ensure_dataset(s, client, ClassificationTask(name="t", labels=["spam", "ham"]))
    with pytest.raises(A.DatasetMismatch, match=r"asks for labels \['spam', 'ham'\]"):
        A.ensure_dataset(s, client)
    with pytest.raises(A.DatasetMismatch):
        A.sync_dataset(s)
    ds = A.find_dataset(client, s)
    assert len(A.list_records(client, str(ds.id), include="")) == 0
    ds.delete()

    # The layout dispatches on the task family: a generation dataset is set up and checked
    # (prompt field, text question, preference question), and refused for classification.
    from labelloop.tasks import task_from_dict

    gen_task = task_from_dict({"type": "generation", "name": "chat"})
    gen, info = A.ensure_dataset(s, client, gen_task)
    assert info.created and A.ensure_dataset(s, client, gen_task)[1].created is False
    assert {type(q).__name__ for q in gen.settings.questions} == {"TextQuestion", "LabelQuestion"}
    with pytest.raises(A.DatasetMismatch, match="no label question"):
        A.ensure_dataset(s, client)
    gen.delete()


# -- generation ---------------------------------------------------------------------------------
# The last one is a chat's later answer: its prompt holds the earlier turns.
GEN_CHAT = ('[{"role":"user","content":"tell me about topic number 7"},{"role":"assistant",'
            '"content":"It is a topic."},{"role":"user","content":"tell me more"}]')
GEN_CHAT_SHOWN = ("User: tell me about topic number 7\n\nAssistant: It is a topic.\n\n"
                  "User: tell me more")
GEN_PROMPTS = [f"tell me about topic number {i}" for i in range(7)] + [GEN_CHAT]


@pytest.fixture(scope="module")
def gen_loop(argilla_server, tmp_path_factory):
    """A generation champion (a tiny random Llama, tests/integration/test_generation_service.py)
    served by the real service, an Argilla generation dataset with its webhook, and a capture."""
    from annotation import argilla as A
    from annotation.argilla_webhook import EVENTS
    from tests.integration.test_generation_service import register_generation_version

    import argilla as rg

    root = tmp_path_factory.mktemp("argilla-gen")
    pd.DataFrame({"prompt": ["hello", "what is your name"], "response": ["hi", "bot"]}).to_csv(
        root / "pairs.csv", index=False)
    cfg = {"data_dir": str(root / "data"), "task": {"type": "generation", "name": "chat"},
           "dataset": {"path": str(root / "pairs.csv"), "encoding": "utf-8"},
           "registry": {"model_name": "labelloop-chat"},
           "generation": {"max_new_tokens": 8},
           "annotation": {"tools": ["argilla"]},
           "argilla": {**argilla_server.argilla_overrides()["argilla"],
                       "dataset": f"gen-{uuid.uuid4().hex[:8]}", "pool_size": len(GEN_PROMPTS)},
           "serving": {"port": free_port(), "poll_interval_s": 2.0, "admin_token": ADMIN}}
    with demo_service(root, cfg, lambda s: register_generation_version(s, seed=0, champion=True)) \
            as (settings_file, settings, champion):
        client = A.connect(settings)
        out = A.setup(settings, client=client, progress=lambda m: None)
        capture = Capture()
        spy = rg.Webhook(url=f"http://127.0.0.1:{capture.port}/hook", events=EVENTS,
                         _client=client).create()
        try:
            yield {"root": root, "settings_file": settings_file, "settings": settings,
                   "champion": champion, "client": client, "dataset": out["dataset"],
                   "capture": capture}
        finally:
            try:
                spy.delete()
            except Exception:  # noqa: BLE001
                pass


def gen_answer(ui, record_id, response, choice=None, status="submitted"):
    values = {"response": {"value": response}}
    if choice is not None:
        values["preference"] = {"value": choice}
    r = ui.post(f"/api/v1/records/{record_id}/responses", json={"values": values, "status": status})
    assert r.status_code == 201, r.text
    return r.json()


def test_generation_answers_through_argilla_webhooks_sync_and_a_new_champion(gen_loop, tmp_path):
    """Generation on the real server: dataset layout, records with the champion's responses,
    an annotator accepting, rewriting, updating, discarding, comparing (a/b/tie/both_bad),
    drafting and deleting; webhooks + reversed replays + sync leave exactly the final answers;
    a new champion's responses reach the pending records in place."""
    from annotation import argilla as A
    from annotation.argilla_webhook import read_hook
    from annotation.tools import TOOLS
    from standardwebhooks import Webhook
    from tests.integration.test_generation_service import register_generation_version

    s, client, dataset_id, v1 = (gen_loop["settings"], gen_loop["client"], gen_loop["dataset"],
                                 gen_loop["champion"])
    ds = A.get_dataset(s, client)
    kinds = {q.name: type(q).__name__ for q in ds.settings.questions}
    assert kinds == {"response": "TextQuestion", "preference": "LabelQuestion"}
    assert {f.name for f in ds.settings.fields} == {"prompt", "response_a", "response_b"}
    out = A.log_pool(s, texts=GEN_PROMPTS, client=client)
    assert out["logged"] == len(GEN_PROMPTS) and out["model_version"] == v1
    assert A.log_pool(s, texts=GEN_PROMPTS, client=client)["logged"] == 0  # never twice
    records = A.list_records(client, dataset_id)
    assert len(records) == len(GEN_PROMPTS)
    for r in records:
        (sug,) = r["suggestions"]
        assert sug["agent"] == v1 and sug["value"] == r["fields"]["response_a"]
        assert r["metadata"]["model_version"] == v1
        assert r["metadata"]["uncertainty"] == pytest.approx(1 - sug["score"], abs=1e-5)
    with_b = [r for r in records if r["fields"].get("response_b")]
    assert len(with_b) >= 4  # wide random weights: the sampled response mostly differs
    # The conversation reads as its turns; its exact prompt is kept beside them.
    (chat,) = [r for r in records if r["metadata"].get("conversation")]
    assert chat["fields"]["prompt"] == GEN_CHAT_SHOWN and chat["metadata"]["conversation"] == GEN_CHAT

    name, ui = annotator(s, client)
    # Records with two responses first, the conversation first among them when it has two: the
    # first four answers compare them.
    todo = sorted(queue(ui, dataset_id), key=lambda r: (not r["fields"].get("response_b"),
                                                        r["fields"]["prompt"] != GEN_CHAT_SHOWN))
    assert len(todo) == len(GEN_PROMPTS)
    accept, rewrite, update, both_bad, discard, draft, delete, *rest = todo
    shown = {r["id"]: r["suggestions"][0]["value"] for r in todo}
    gen_answer(ui, accept["id"], shown[accept["id"]], "a")
    gen_answer(ui, rewrite["id"], "A better answer, written by hand.", "b")
    first = gen_answer(ui, update["id"], "first try", "a")
    time.sleep(1.1)
    r = ui.put(f"/api/v1/responses/{first['id']}",
               json={"values": {"response": {"value": "second try"},
                                "preference": {"value": "tie"}}, "status": "submitted"})
    assert r.status_code == 200, r.text
    gen_answer(ui, both_bad["id"], "Neither: this one.", "both_bad")
    gen_answer(ui, discard["id"], shown[discard["id"]], status="discarded")
    gen_answer(ui, draft["id"], "half done", status="draft")
    gone = gen_answer(ui, delete["id"], "to be deleted", "a")
    time.sleep(0.5)
    assert ui.delete(f"/api/v1/responses/{gone['id']}").status_code == 200
    assert ui.post(f"/api/v1/records/{accept['id']}/responses", json={
        "values": {"response": {"value": "x"}, "preference": {"value": "left"}},
        "status": "submitted"}).status_code in (409, 422)  # a choice outside the labels

    want = {(accept["id"], "response"): shown[accept["id"]],
            (rewrite["id"], "response"): "A better answer, written by hand.",
            (update["id"], "response"): "second try",
            (both_bad["id"], "response"): "Neither: this one."}
    choices = {accept["id"]: "a", rewrite["id"]: "b", update["id"]: "tie",
               both_bad["id"]: "both_bad"}

    def settled(rows):
        act = rows[rows["status"] == "active"]
        got = {(t, k): lab for t, k, lab in zip(act["task_id"], act["kind"], act["label"])
               if k == "response"}
        prefs = {t: c for t, k, c in zip(act["task_id"], act["kind"], act["choice"])
                 if k == "preference"}
        return (got == want and prefs == choices
                and set(rows.loc[rows["status"] == "invalid", "task_id"]) == {discard["id"]}
                and set(rows.loc[rows["status"] == "deleted", "task_id"]) == {delete["id"]})

    rows = wait_store(s, dataset_id, settled)
    assert settled(rows), rows[["task_id", "kind", "label", "choice", "status", "via"]].to_string()
    assert set(rows["via"]) == {"webhook"} and draft["id"] not in set(rows["task_id"])
    act = rows[rows["status"] == "active"]
    resp = act[act["kind"] == "response"].set_index("task_id")
    assert set(resp["annotator"]) == {name} and set(resp["model_version"]) == {v1}
    assert set(act["text"]) <= set(GEN_PROMPTS)  # exact prompts, the conversation's included
    if accept["fields"]["prompt"] == GEN_CHAT_SHOWN:
        assert resp.loc[accept["id"], "text"] == GEN_CHAT
    assert resp.loc[accept["id"], "changed"] == 0 and resp.loc[rewrite["id"], "changed"] == 1
    pref = act[act["kind"] == "preference"].set_index("task_id")
    assert pref.loc[rewrite["id"], "label"] == rewrite["fields"]["response_b"]
    assert pref.loc[rewrite["id"], "rejected"] == rewrite["fields"]["response_a"]
    # Quality signals per model version from the Argilla answers: 1 of 4 responses kept as shown.
    from annotation.agreement import generation_signals

    signals = generation_signals(act)
    assert signals[v1]["responses"] == 4 and signals[v1]["accepted_unedited"] == 0.25
    before, seq = final_state(s, dataset_id)

    # Replays of every delivery, reversed, twice: not one write.
    deadline = time.time() + 20
    while len(gen_loop["capture"].deliveries) < 8 and time.time() < deadline:
        time.sleep(0.2)
    hook = Webhook(read_hook(s)["secret"])
    url = f"http://127.0.0.1:{s.serving.port}/argilla/webhook"
    for _ in range(2):
        for headers, body in reversed(gen_loop["capture"].deliveries):
            msg_id = headers.get("webhook-id") or headers.get("Webhook-Id")
            now = datetime.now(timezone.utc)
            r = httpx.post(url, content=body, timeout=30, headers={
                "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": hook.sign(msg_id, now, body.decode()),
                "content-type": "application/json"})
            assert r.status_code == 200, r.text
    after, seq_after = final_state(s, dataset_id)
    pd.testing.assert_frame_equal(before, after)
    assert seq_after == seq
    # The pull sync agrees; alone (a fresh store) it gives the same rows.
    report = A.sync_dataset(s)
    assert set(report["outcomes"]) <= {"unchanged"} and report["deleted"] == 0, report
    fresh = load_settings(str(gen_loop["settings_file"]), overrides={"data_dir": str(tmp_path / "d")})
    A.sync_dataset(fresh)
    alone, _ = final_state(fresh, dataset_id)
    live = before[before["status"] != "deleted"].drop(columns=["updated_ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.drop(columns=["updated_ts"]), live, check_dtype=False)

    # A new champion: the pending records get its responses in place (A = new, B = the old A).
    pending_before = {r["id"]: r for r in A.list_records(client, dataset_id) if not r["responses"]}
    v2 = register_generation_version(s, seed=1, champion=True)
    got = TOOLS["argilla"].publish(s, None, None)
    assert got["model_version"] == v2 and got["pushed"] == len(pending_before), got
    assert TOOLS["argilla"].publish(s, None, None)["pushed"] == 0  # idempotent
    records = A.list_records(client, dataset_id)
    assert len(records) == len(GEN_PROMPTS)  # in place, never duplicated
    for r in records:
        if r["id"] in pending_before:
            assert {x["agent"] for x in r["suggestions"]} == {v2}
            assert r["metadata"]["model_version"] == v2
            old_a = pending_before[r["id"]]["fields"]["response_a"]
            if r["fields"].get("response_b"):
                assert r["fields"]["response_b"] == old_a and r["metadata"]["version_b"] == v1
        else:
            assert r["metadata"]["model_version"] == v1  # what its annotator saw
    # A classification model against this generation dataset: one clear error.
    wrong = load_settings(str(gen_loop["settings_file"]),
                          overrides={"task": {"type": "classification", "name": "s",
                                              "labels": ["negative", "positive"]},
                                     "promotion": {"metric": "macro_f1"}})
    with pytest.raises(A.DatasetMismatch, match="no label question"):
        A.get_dataset(wrong, client)
