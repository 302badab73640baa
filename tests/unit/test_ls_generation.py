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
