"""Label Studio for generation, the parts without a server: the edit and compare label configs
(built and checked), annotations of both as labels-store records, and the ML backend's
/predict answering a TextArea config through the real generation engine of a tiny model."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from annotation.config import (
    LabelConfigError, check_label_config, classification_config, label_config_for, project_kinds,
)
from annotation.records import record_from_annotation
from labelloop.labels_store import LabelsStore
from labelloop.settings import Settings
from labelloop.tasks import ClassificationTask, GenerationTask

TASK = GenerationTask(name="chat")


# -- configs -------------------------------------------------------------------------------------
def test_generation_has_edit_and_compare_projects_whose_configs_check():
    assert project_kinds(TASK) == ("edit", "compare")
    edit, compare = label_config_for(TASK, "edit"), label_config_for(TASK, "compare")
    check_label_config(edit, TASK, "edit")
    check_label_config(compare, TASK, "compare")
    assert "<Rating" in edit and "<Rating" not in label_config_for(TASK, "edit", rating=False)
    check_label_config(label_config_for(TASK, "edit", rating=False), TASK, "edit")
    # a project of the other kind, or a classification project, is refused with the reason
    with pytest.raises(LabelConfigError, match="no <Pairwise"):
        check_label_config(edit, TASK, "compare")
    with pytest.raises(LabelConfigError, match="no <TextArea"):
        check_label_config(compare, TASK, "edit")
    cls = classification_config(ClassificationTask(name="s", labels=("a", "b")))
    with pytest.raises(LabelConfigError, match="no <TextArea"):
        check_label_config(cls, TASK, "edit")
    with pytest.raises(LabelConfigError, match="name one"):
        label_config_for(TASK)
    with pytest.raises(LabelConfigError, match="no 'label' project"):
        label_config_for(TASK, "label")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda x: x.replace('toName="response_a,response_b"', 'toName="response_b,response_a"'),
     "in that order"),
    (lambda x: x.replace('<Choice value="tie" html="Both equally good"/>', ""), "must offer"),
    (lambda x: x.replace('name="verdict"', 'name="other"'), 'no <Choices name="verdict">'),
    (lambda x: x.replace("<View>", "<View").replace("</View>", ""), "not valid XML"),
])
def test_broken_compare_configs_are_refused(mutate, fragment):
    with pytest.raises(LabelConfigError, match=fragment):
        check_label_config(mutate(label_config_for(TASK, "compare")), TASK, "compare")


def test_an_edit_textarea_must_answer_the_prompt():
    bad = label_config_for(TASK, "edit").replace('value="$prompt"', 'value="$question"')
    with pytest.raises(LabelConfigError, match=r"showing \$prompt"):
        check_label_config(bad, TASK, "edit")


# -- annotations as records ------------------------------------------------------------------------
def textarea(text, origin=None):
    item = {"from_name": "response", "to_name": "prompt", "type": "textarea",
            "value": {"text": text if isinstance(text, list) else [text]}}
    return [{**item, "origin": origin}] if origin else [item]


PRED = {"id": 55, "model_version": "3", "score": 1.0, "result": textarea("Hi there.")}
EDIT_TASK = {"id": 9, "project": 4, "data": {"prompt": "Hello?"}, "predictions": [PRED]}


def edit(result, **kw):
    ann = {"id": 100, "task": 9, "result": result, "parent_prediction": 55,
           "completed_by": {"id": 1, "email": "ann@x"}, "created_at": "2026-12-02T10:00:00Z",
           "updated_at": "2026-12-02T10:00:00Z", **kw}
    return record_from_annotation(TASK, 4, ann, EDIT_TASK, via="sync")


def test_edit_annotations_become_response_records():
    kept = edit(textarea("Hi there.", "prediction"))
    assert (kept.kind, kept.status, kept.text, kept.label) == ("response", "active", "Hello?",
                                                               "Hi there.")
    assert (kept.shown_label, kept.model_version, kept.edit_distance) == ("Hi there.", "3", 0.0)
    rewritten = edit(textarea(["Hello! How", "can I help?"], "prediction-changed"))
    assert rewritten.label == "Hello! How\ncan I help?" and rewritten.edit_distance > 0.5
    assert rewritten.shown_label == "Hi there." and rewritten.annotator == "ann@x"
    for result, reason in ((textarea("   "), "the response is empty"), ([], "the response is empty"),
                           (None, "the response is empty")):
        bad = edit(result)
        assert bad.status == "invalid" and reason in bad.reason and bad.kind == "response"
    assert "cancelled" in edit(textarea("x"), was_cancelled=True).reason


def test_accepted_and_edited_flags_in_the_store(tmp_path):
    store = LabelsStore(tmp_path / "labels.db")
    store.upsert_many([edit(textarea("Hi there.  ")),
                       edit(textarea("Hey."), id=101), edit(textarea("hi there."), id=102)])
    rows = store.rows().set_index("annotation_id")
    assert rows.loc["100", "changed"] == 0 and rows.loc["100", "edit_distance"] == 0.0
    assert rows.loc["101", "changed"] == 1 and rows.loc["102", "changed"] == 1
    assert 0 < rows.loc["102", "edit_distance"] < rows.loc["101", "edit_distance"]


COMPARE_TASK = {"id": 12, "project": 5, "data": {
    "prompt": "Hello?", "response_a": "Hi.", "response_b": "Go away.", "version_a": "3",
    "version_b": "2"}}


def compare(result, data=None, **kw):
    task = {**COMPARE_TASK, "data": {**COMPARE_TASK["data"], **(data or {})}}
    ann = {"id": 200, "task": 12, "result": result, "updated_at": "2026-12-02T10:00:00Z", **kw}
    return record_from_annotation(TASK, 5, ann, task, via="webhook")


def pairwise(side):
    return [{"from_name": "comparison", "to_name": "response_a", "type": "pairwise",
             "value": {"selected": side}}]


def verdict(value):
    return [{"from_name": "verdict", "to_name": "prompt", "type": "choices",
             "value": {"choices": [value]}}]


def test_compare_annotations_become_preference_records():
    left = compare(pairwise("left"))
    assert (left.kind, left.choice, left.label, left.rejected) == ("preference", "a", "Hi.",
                                                                   "Go away.")
    assert (left.chosen_version, left.rejected_version, left.model_version) == ("3", "2", "3")
    right = compare(pairwise("right"))
    assert (right.choice, right.label, right.rejected) == ("b", "Go away.", "Hi.")
    assert (right.chosen_version, right.rejected_version) == ("2", "3")
    tie = compare(verdict("both_bad"))
    assert tie.status == "active" and tie.choice == "both_bad"


@pytest.mark.parametrize("result, data, reason", [
    ([], None, "no choice made"),
    (pairwise("up"), None, "no choice made"),
    (pairwise("left") + verdict("tie"), None, "one answer only"),
    (pairwise("left"), {"response_b": " Hi. "}, "identical"),
    (pairwise("left"), {"response_b": ""}, "response B is empty"),
    (pairwise("left"), {"prompt": None}, "no 'prompt'"),
])
def test_bad_comparisons_are_invalid_with_the_reason(result, data, reason):
    rec = compare(result, data)
    assert rec.status == "invalid" and reason in rec.reason and rec.kind == "preference"


def test_an_unknown_task_shape_is_invalid():
    rec = record_from_annotation(TASK, 4, {"id": 1, "result": textarea("x")},
                                 {"id": 3, "data": {"text": "a tweet"}}, via="sync")
    assert rec.status == "invalid" and "no 'prompt'" in rec.reason


# -- the ML backend's /predict for a generation champion ---------------------------------------
@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from fastapi.testclient import TestClient

    from labelloop.generation_engine import Generator
    from services.ls_backend import create_app
    from services.runtime import LoadedModel
    from tests.helpers import tiny_generation_bundle

    bundle = tiny_generation_bundle(tmp_path_factory.mktemp("gen") / "b", seed=5)
    gen = Generator(bundle, device="cpu", version="4", slots=4, max_prompt_tokens=64,
                    max_new_tokens=16)
    logged = []
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("d")),
                        serving={"ls_basic_auth_password": "pw"},
                        generation={"max_new_tokens": 8})
    state = SimpleNamespace(
        settings=settings, holder=SimpleNamespace(current=LoadedModel("4", None, generator=gen)),
        plog=SimpleNamespace(record_generation=lambda *a: logged.append(a)), auth_throttle=None)
    auth = {"Authorization": "Basic " + base64.b64encode(b"labelloop:pw").decode()}
    with TestClient(create_app(lambda: state)) as client:
        yield client, auth, gen, logged
    gen.engine.close()


def test_predict_fills_the_edit_textarea_in_task_order(backend):
    client, auth, gen, logged = backend
    prompts = ["hello how are you", "tell me a joke", "what is your name"]
    tasks = [{"id": i, "data": {"prompt": p}} for i, p in enumerate(prompts)]
    r = client.post("/predict", headers=auth, json={
        "tasks": tasks, "label_config": label_config_for(TASK, "edit")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "4" and len(body["results"]) == 3
    from labelloop.generation_engine import GenRequest, Sampling
    from services.generation_api import result_of

    for prompt, res in zip(prompts, body["results"]):
        assert res["model_version"] == "4"
        (item,) = res["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == ("response", "prompt",
                                                                      "textarea")
        # the engine's greedy answer to that prompt, at most generation.max_new_tokens long
        req = GenRequest(gen.encode(prompt), Sampling(max_new_tokens=8))
        gen.engine.submit([req])
        req.wait(30)
        assert item["value"]["text"] == [result_of(gen, req)["text"]]
    assert logged and logged[-1][2] == "4" and logged[-1][3] == "ls"
    assert client.post("/setup", headers=auth, json={
        "schema": label_config_for(TASK, "edit")}).json() == {"model_version": "4"}


def test_predict_refuses_configs_a_generation_model_cannot_fill(backend):
    client, auth, _, _ = backend
    tasks = [{"id": 1, "data": {"prompt": "hi"}}]
    r = client.post("/predict", headers=auth, json={
        "tasks": tasks, "label_config": label_config_for(TASK, "compare")})
    assert r.status_code == 422 and "task data" in r.json()["error"] and "<Pairwise>" in \
        r.json()["error"]
    cls = classification_config(ClassificationTask(name="s", labels=("a", "b")))
    r = client.post("/predict", headers=auth, json={"tasks": tasks, "label_config": cls})
    assert r.status_code == 422 and "generates text" in r.json()["error"]
    r = client.post("/setup", headers=auth, json={"schema": cls})
    assert r.status_code == 422
    r = client.post("/predict", headers=auth, json={
        "tasks": [{"id": 7, "data": {"prompt": "  "}}],
        "label_config": label_config_for(TASK, "edit")})
    assert r.status_code == 422 and "task 7" in r.json()["error"]
    r = client.post("/predict", headers=auth, json={
        "tasks": [{"id": 8, "data": {"text": "hi"}}],
        "label_config": label_config_for(TASK, "edit")})
    assert r.status_code == 422 and "no data key 'prompt'" in r.json()["error"]


# -- live quality signals ----------------------------------------------------------------------
def test_generation_signals_per_version(tmp_path):
    from annotation.agreement import generation_signals
    from labelloop.labels_store import LabelRecord

    def resp(i, shown, final, version):
        return LabelRecord(source="label-studio", project="1", annotation_id=f"r{i}",
                           text=f"p{i}", label=final, kind="response", shown_label=shown,
                           model_version=version, updated_at=float(i))

    def pref(i, choice, va, vb):
        return LabelRecord(source="label-studio", project="2", annotation_id=f"c{i}",
                           text=f"q{i}", label="A", rejected="B", choice=choice,
                           kind="preference", chosen_version=va, rejected_version=vb,
                           updated_at=float(i))

    store = LabelsStore(tmp_path / "labels.db")
    store.upsert_many([resp(1, "ok", "ok", "1"), resp(2, "ok", "okay then", "1"),
                       resp(3, "hi", "hi", "2"), pref(1, "a", "2", "1"), pref(2, "a", "1", "2"),
                       pref(3, "a", "2", "1"), pref(4, "a", "2", "2"), pref(5, "tie", "2", "1")])
    sig = generation_signals(store.rows(status="active"))
    assert sig["1"]["responses"] == 2 and sig["1"]["accepted_unedited"] == 0.5
    assert 0 < sig["1"]["edit_distance"] < 1
    assert sig["2"]["accepted_unedited"] == 1.0 and sig["2"]["edit_distance"] == 0.0
    # v2 won 2 of its 3 comparisons with v1; the v2-v2 pair and the tie say nothing
    assert (sig["2"]["wins"], sig["2"]["comparisons"]) == (2, 3)
    assert sig["2"]["win_rate"] == pytest.approx(2 / 3)
    assert sig["1"]["win_rate"] == pytest.approx(1 / 3)
    from services.status_page import _agreement

    assert _agreement(None, sig["2"]) == ("100% of 1 kept unedited, edit distance 0.00; "
                                          "won 67% of 3 comparisons")


# -- projects, import and push against a stand-in client ------------------------------------------
class FakeClient:
    """Just the SDK calls annotation/ls_generation.py makes, over dicts."""

    def __init__(self):
        self.projects_ = {}
        self.tasks_ = {}
        client = self

        class Projects:
            def list(self, title=None):
                return [SimpleNamespace(**p) for p in client.projects_.values()
                        if title in (None, p["title"])]

            def create(self, title, label_config, **kw):
                pid = len(client.projects_) + 1
                client.projects_[pid] = {"id": pid, "title": title, "label_config": label_config,
                                         **kw}
                return SimpleNamespace(id=pid)

            def get(self, id):
                return SimpleNamespace(**client.projects_[id])

            def update(self, id, **kw):
                client.projects_[id].update(kw)

            def import_tasks(self, id, request):
                for t in request:
                    tid = len(client.tasks_) + 1
                    preds = [{**p, "id": tid * 100} for p in t.get("predictions", [])]
                    client.tasks_[tid] = {"id": tid, "project": id, "data": dict(t["data"]),
                                          "predictions": preds, "total_annotations": 0,
                                          "cancelled_annotations": 0}

            def import_predictions(self, id, request):
                for p in request:
                    client.tasks_[p["task"]]["predictions"].append(p)

        class Tasks:
            def list(self, project, fields=None):
                return [SimpleNamespace(**t) for t in client.tasks_.values()
                        if t["project"] == project]

            def update(self, id, data):
                client.tasks_[int(id)]["data"] = data

        self.projects, self.tasks = Projects(), Tasks()

    def project_tasks(self, title):
        pid = next(p["id"] for p in self.projects_.values() if p["title"] == title)
        return [t for t in self.tasks_.values() if t["project"] == pid]


def test_import_and_push_fill_both_projects_idempotently(tmp_path, monkeypatch):
    from annotation import ls_generation as G
    from labelloop.generation import feedback

    version = {"v": "1"}
    monkeypatch.setattr(feedback, "champion_responses", lambda s, g, prompts: (
        [f"v{version['v']} says {p}" for p in prompts],
        [f"v{version['v']} samples {p}" if "same" not in p else f"v{version['v']} says {p}"
         for p in prompts]))
    from labelloop.settings import load_settings
    from tests.helpers import REPO_ROOT

    s = load_settings(str(REPO_ROOT / "configs" / "generation.yaml"), environ={}, overrides={
        "data_dir": str(tmp_path), "studio": {"project_title": "chat", "pool_size": 3}})
    client = FakeClient()
    gen = SimpleNamespace(version="1")
    out = G.import_prompts(s, ["hi", "same", "hi", "yo", "hey", "more"], client, gen)
    assert (out["imported"], out["imported_compare"], out["skipped_same_responses"]) == (3, 2, 1)
    edit, compare = client.project_tasks("chat: edit"), client.project_tasks("chat: compare")
    assert client.projects_[out["projects"]["edit"]]["model_version"] == "1"
    for t in edit:
        (pred,) = t["predictions"]
        assert pred["model_version"] == "1" and pred["result"][0]["value"]["text"] == [
            f"v1 says {t['data']['prompt']}"]
    for t in compare:
        d = t["data"]
        assert (d["response_a"], d["response_b"], d["version_a"], d["version_b"]) == (
            f"v1 says {d['prompt']}", f"v1 samples {d['prompt']}", "1", "1")
    # again: the same prompts are in both projects already (the one with identical responses
    # has no compare task, so it is tried again and skipped again)
    again = G.import_prompts(s, ["hi", "same", "yo", "hey", "more"][:3], client, gen)
    assert again["imported"] == 0 and again["imported_compare"] == 0
    assert G.ensure_projects(s, client)["edit"].created is False

    # a new champion: one edit task is answered, the others get its prediction; pending
    # compare tasks show it against what they showed before
    edit[0]["total_annotations"] = 1
    version["v"] = "2"
    pushed = G.push_responses(s, client, SimpleNamespace(version="2"))
    assert (pushed["pushed_edit"], pushed["pushed_compare"]) == (2, 2)
    assert [p["model_version"] for p in edit[0]["predictions"]] == ["1"]
    for t in edit[1:]:
        assert [p["model_version"] for p in t["predictions"]] == ["1", "2"]
    for t in compare:
        d = t["data"]
        assert (d["response_a"], d["response_b"], d["version_a"], d["version_b"]) == (
            f"v2 says {d['prompt']}", f"v1 says {d['prompt']}", "2", "1")
    assert G.push_responses(s, client, SimpleNamespace(version="2"))["pushed"] == 0


# -- the edit project's optional rating ----------------------------------------------------------
def rating(value):
    return [{"from_name": "rating", "to_name": "prompt", "type": "rating",
             "value": {"rating": value}}]


def test_a_rating_is_stored_from_the_webhook_and_the_export_sync_alike(tmp_path):
    from annotation import webhook
    from annotation.sync import sync_project
    from labelloop.settings import load_settings

    def gen_settings(name):
        return load_settings(overrides={"data_dir": str(tmp_path / name),
                                        "task": {"type": "generation", "name": "chat"}},
                             environ={})

    ann = {"id": 100, "task": 9, "project": 4, "parent_prediction": 55,
           "result": textarea("Hello!", "prediction-changed") + rating(4),
           "completed_by": {"id": 1, "email": "ann@x"}, "created_at": "2026-12-02T10:00:00Z",
           "updated_at": "2026-12-02T10:00:00Z"}
    later = {**ann, "result": textarea("Hello!", "prediction-changed") + rating(2),
             "updated_at": "2026-12-02T10:05:00Z"}
    event = {"action": "ANNOTATION_CREATED", "annotation": ann, "project": {"id": 4},
             "task": EDIT_TASK}
    finals = []
    for name, order in (("webhook-first", ("webhook", "sync")),
                        ("sync-first", ("sync", "webhook"))):
        s = gen_settings(name)
        for channel in order:
            if channel == "webhook":
                webhook.handle_event(s, event)
            else:
                sync_project(s, 4, tasks=[{**EDIT_TASK, "annotations": [ann]}])
        with LabelsStore(s.labels_path) as store:
            row = store.get("label-studio", "4", "100")
        assert (row["kind"], row["label"], row["rating"]) == ("response", "Hello!", 4)
        assert row["shown_label"] == "Hi there."  # the sync brought what the webhook lacks
        # the annotator changes only the rating: a new version of the answer
        report = sync_project(s, 4, tasks=[{**EDIT_TASK, "annotations": [later]}])
        assert report["outcomes"] == {"updated": 1}
        with LabelsStore(s.labels_path) as store:
            finals.append(store.get("label-studio", "4", "100")["rating"])
    assert finals == [2, 2]
    # no rating: stored as not rated
    assert edit(textarea("Hi there.", "prediction")).rating is None


@pytest.mark.parametrize("value", [0, 6, 4.5, "4", True, None, [4]])
def test_a_malformed_rating_makes_the_answer_invalid_with_the_reason(value):
    if value is None:  # a rating item without a value: no rating, the answer stands
        assert edit(textarea("Hey.") + rating(None)).status == "active"
        return
    bad = edit(textarea("Hey.") + rating(value))
    assert bad.status == "invalid" and "bad rating" in bad.reason and "1 to 5" in bad.reason
    assert bad.rating is None


def test_a_whole_float_rating_is_a_whole_number():
    assert edit(textarea("Hey.") + rating(3.0)).rating == 3


# -- a conversation prompt reads as its turns ------------------------------------------------------
CHAT = ('[{"role":"system","content":"Answer briefly."},{"role":"user","content":"My printer is '
        'offline."},{"role":"assistant","content":"Did you restart it?"},{"role":"user",'
        '"content":"Yes, twice."}]')
CHAT_SHOWN = ("System: Answer briefly.\n\nUser: My printer is offline.\n\n"
              "Assistant: Did you restart it?\n\nUser: Yes, twice.")


def test_a_conversation_task_shows_its_turns_and_keeps_the_exact_prompt():
    from annotation.config import task_prompt
    from annotation.ls_generation import compare_data, edit_task

    task = edit_task(CHAT, "Try unplugging it.", "3", 0)
    assert task["data"]["prompt"] == CHAT_SHOWN and task["data"]["conversation"] == CHAT
    assert task_prompt(task["data"]) == CHAT
    data = compare_data(CHAT, "a", "3", "b", "3", 1)
    assert data["prompt"] == CHAT_SHOWN and task_prompt(data) == CHAT
    # a plain prompt is shown as it is, nothing beside it; a task imported by hand is its text
    assert edit_task("Hello?", "Hi.", "3", 0)["data"] == {"prompt": "Hello?", "rank": 0}
    assert task_prompt({"prompt": "Hello?"}) == "Hello?"
    assert task_prompt({"prompt": "x", "conversation": "not a conversation"}) == "x"
    # annotations of such tasks are stored under the exact prompt, which training reads back
    ann = {"id": 300, "task": 9, "result": textarea("Unplug it."), "parent_prediction": 55}
    rec = record_from_annotation(TASK, 4, ann, {**EDIT_TASK, "data": {
        "prompt": CHAT_SHOWN, "conversation": CHAT}}, via="sync")
    assert (rec.status, rec.text, rec.label) == ("active", CHAT, "Unplug it.")
    pref = compare(pairwise("left"), {"prompt": CHAT_SHOWN, "conversation": CHAT})
    assert pref.status == "active" and pref.text == CHAT


def test_predict_answers_a_conversation_task_from_its_exact_prompt(backend):
    """The conversation, not its transcript, is answered; too long for the engine (86 tokens,
    the engine takes 64), it is fitted as training fits it (oldest turns first) rather than
    refused, which would cost every task of the call its response."""
    from annotation.config import prompt_data
    from labelloop.generation_engine import GenRequest, Sampling
    from services.generation_api import result_of

    client, auth, gen, logged = backend
    assert len(gen.encode(CHAT)) > gen.max_prompt_tokens
    r = client.post("/predict", headers=auth, json={
        "tasks": [{"id": 1, "data": prompt_data(CHAT)}, {"id": 2, "data": {"prompt": "hi"}}],
        "label_config": label_config_for(TASK, "edit")})
    assert r.status_code == 200, r.text
    assert logged[-1][0] == [CHAT, "hi"]
    fitted = gen.encode(CHAT, max_tokens=gen.max_prompt_tokens)
    assert len(fitted) <= gen.max_prompt_tokens
    req = GenRequest(fitted, Sampling(max_new_tokens=8))
    gen.engine.submit([req])
    req.wait(30)
    assert r.json()["results"][0]["result"][0]["value"]["text"] == [result_of(gen, req)["text"]]
