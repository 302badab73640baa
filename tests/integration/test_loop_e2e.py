"""The whole loop with the real servers: Label Studio (the session's `label_studio` fixture) and the
BentoML service started as a real process (`bentoml serve`, through pipelines.demo).

Project setup with predictions -> bulk "retrieve predictions" through Label Studio -> annotations
through the Label Studio API as annotators make them (keeps, corrections, an update, a delete;
the webhook delivers them to the service) -> `labelloop feedback` -> the training data holds
exactly the final annotations, a new version was trained and promoted (the champion is a model
that always answers "positive", so any trained model beats it), the service answers with it, and
the pending tasks got its predictions.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import pytest
import torch

from labelloop import labels_store, modeling, registry
from labelloop.tasks import task_from_settings
from tests.helpers import demo_service, free_port, sample_corpus
from tests.integration.test_browser import browser_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ADMIN = "e2e-admin-token"


def register_constant_champion(settings, label: str) -> str:
    """A ready champion whose head always answers `label` (a deliberately bad model)."""
    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    model = modeling.load_base_classifier(base, task)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(
            [4.0 if lab == label else 0.0 for lab in task.labels]))
    with tempfile.TemporaryDirectory() as tmp:
        modeling.save_bundle(model, modeling.load_tokenizer(base), Path(tmp) / "b", {
            "task": task.to_dict(), "max_length": settings.model.max_length,
            "base_model": settings.model.base, "dataset_digest": "constant", "method": "none"})
        exp = registry.ensure_experiment(settings)
        with mlflow.start_run(experiment_id=exp, run_name="constant-champion") as run:
            mlflow.log_artifacts(str(Path(tmp) / "b"), registry.BUNDLE_ARTIFACT_PATH)
    mv = registry.register_bundle(settings, run.info.run_id)
    registry.set_champion(settings, mv.version)
    return str(mv.version)


@pytest.fixture(scope="module")
def loop(label_studio, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    corpus = sample_corpus(root, 300, seed=11)
    studio_cfg = label_studio.studio_overrides()["studio"]
    studio_cfg.update({"project_title": f"e2e-{uuid.uuid4().hex[:8]}", "pool_size": 10})
    cfg = {
        "data_dir": str(root / "data"),
        "dataset": {"path": str(root / "small.csv"), "encoding": "utf-8"},
        "model": {"max_length": 32},
        "training": {"method": "full", "learning_rate": 1e-4, "batch_size": 16, "max_steps": 6},
        "evaluation": {"sample_predictions": 3},
        "studio": studio_cfg,
        "serving": {"port": free_port(), "poll_interval_s": 2.0, "admin_token": ADMIN,
                    "webhook_secret": "e2e-secret", "ls_basic_auth_password": "e2e-basic"},
        # The constant champion's head (bias 4 on "positive") needs a strong push to move in a
        # warm start of a few steps; a trained champion needs none of this.
        "feedback": {"min_new_labels": 3, "warm_start": {"learning_rate": 1e-3, "epochs": 4}},
    }
    with demo_service(root, cfg, lambda s: register_constant_champion(s, "positive")) as (
            settings_file, settings, champion):
        assert (settings_file.stat().st_mode & 0o777) == 0o600
        yield {"root": root, "settings_file": settings_file, "settings": settings,
               "champion": champion, "corpus": corpus}


def _tasks(client, pid):
    return {t.data["text"]: t for t in client.tasks.list(project=pid, fields="all")}


def _pred_versions(task):
    return [str(p["model_version"] if isinstance(p, dict) else p.model_version)
            for p in (task.predictions or [])]


def _choice(label, origin="manual"):
    from annotation.config import CHOICES_NAME, TEXT_NAME

    return [{"from_name": CHOICES_NAME, "to_name": TEXT_NAME, "type": "choices",
             "value": {"choices": [label]}, "origin": origin}]


def test_project_gets_predictions_through_label_studio(loop):
    from annotation import labelstudio as L
    from pipelines import demo

    s = loop["settings"]
    out = demo.setup_project(s)
    pid = out["project"]
    assert out["import"]["imported"] == 10 and out["ml_backend"]["url"].endswith("/ls")
    again = demo.setup_project(s)  # idempotent: nothing new
    assert again["project"] == pid and again["import"]["imported"] == 0
    client = L.connect(s)
    # Four more tasks WITHOUT predictions: Label Studio asks the service for them in bulk.
    imported = set(_tasks(client, pid))
    extra = [t for t in loop["corpus"]["text"] if t not in imported][:4]
    client.projects.import_tasks(id=pid, request=[{"data": {"text": t}} for t in extra])
    L.retrieve_predictions(s, pid)
    tasks = _tasks(client, pid)
    assert len(tasks) == 14
    for text, task in tasks.items():
        assert _pred_versions(task) == [loop["champion"]], (text, task.predictions)
        p = task.predictions[0]
        p = p if isinstance(p, dict) else p.dict()
        assert p["result"][0]["value"]["choices"] == ["positive"] and 0 < p["score"] <= 1
    loop["project"] = pid


def test_annotations_reach_the_labels_store(loop):
    from annotation import labelstudio as L

    s, pid = loop["settings"], loop["project"]
    client = L.connect(s)
    tasks = _tasks(client, pid)
    texts = list(tasks)

    def pred_id(text):
        p = tasks[text].predictions[0]
        return p["id"] if isinstance(p, dict) else p.id

    ann = client.annotations.create
    ann(id=tasks[texts[0]].id, result=_choice("positive", "prediction"),
        parent_prediction=pred_id(texts[0]))                                 # kept
    ann(id=tasks[texts[1]].id, result=_choice("negative", "prediction-changed"),
        parent_prediction=pred_id(texts[1]))                                 # corrected
    ann(id=tasks[texts[2]].id, result=_choice("neutral", "prediction-changed"),
        parent_prediction=pred_id(texts[2]))                                 # corrected
    a4 = ann(id=tasks[texts[3]].id, result=_choice("negative"))
    a5 = ann(id=tasks[texts[4]].id, result=_choice("positive"))
    ann(id=tasks[texts[5]].id, result=_choice("negative"))
    time.sleep(0.1)
    client.annotations.update(id=a4.id, result=_choice("neutral"))          # an update
    client.annotations.delete(id=a5.id)                                      # a delete
    loop["expected"] = {texts[0]: "positive", texts[1]: "negative", texts[2]: "neutral",
                        texts[3]: "neutral", texts[5]: "negative"}
    loop["annotated"] = {texts[0], texts[1], texts[2], texts[3], texts[5]}
    # The webhook (Label Studio -> service /ls/webhook) writes them as they happen.
    deadline = time.time() + 30
    while time.time() < deadline:
        rows = labels_store.training_rows(s)
        if dict(zip(rows["text"], rows["label"])) == loop["expected"]:
            break
        time.sleep(0.5)
    rows = labels_store.training_rows(s)
    assert dict(zip(rows["text"], rows["label"])) == loop["expected"]
    changed = dict(zip(rows["text"], rows["changed"]))
    assert changed[texts[0]] == 0 and changed[texts[1]] == 1
    # An annotator is at work: the service started the warm launcher for the coming turn.
    from labelloop import launcher, trigger

    deadline = time.time() + 30
    while not launcher.is_running(trigger.feedback_dir(s)):
        assert time.time() < deadline, "no warm launcher after the annotation webhooks"
        time.sleep(0.2)


def _press_start_training(s, pid):
    """What an annotator's "Start training" button does: LS -> POST /ls/webhook START_TRAINING."""
    from annotation import labelstudio as L
    from annotation.studio import api_token

    client = L.connect(s)
    backend = next(b for b in client.ml.list(project=pid) if b.url == L.service_url(s))
    r = httpx.post(f"{L.studio_url(s)}/api/ml/{backend.id}/train",
                   headers={"Authorization": f"Token {api_token(s)}"}, timeout=30)
    assert r.status_code == 200, r.text
    return backend.id


def _press_start_training_in_the_browser(page, s, pid):
    """The button itself, as an annotator finds it (and as `make demo` tells them): project
    Settings > Model > the card's menu > Start Training > confirm."""
    from annotation import labelstudio as L

    url = L.studio_url(s)
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", s.studio.username)
    page.fill("input[name=password]", s.studio.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/user/login" not in u)
    page.goto(f"{url}/projects/{pid}/settings/ml")
    page.get_by_role("button", name="Machine learning model options").click()
    page.get_by_text("Start Training", exact=True).first.click()
    page.get_by_role("button", name="Start Training").last.click()  # the confirmation


def test_start_training_retrains_promotes_serves_and_shows_it(loop, browser_page):
    from annotation import labelstudio as L
    from labelloop import challenger

    from labelloop import launcher, trigger

    s, pid = loop["settings"], loop["project"]
    base = f"http://{s.serving.host}:{s.serving.port}"
    deadline = time.time() + 180  # its imports: seconds when quiet, a minute on a busy box
    while not launcher.socket_path(trigger.feedback_dir(s)).exists():
        assert time.time() < deadline, "the warm launcher never became ready"
        time.sleep(0.5)
    t0 = time.perf_counter()
    _press_start_training_in_the_browser(browser_page, s, pid)
    deadline = time.time() + 60
    while not (info := trigger.running_info(s, pid)):
        assert time.time() < deadline, "Start Training in the browser started no turn"
        time.sleep(0.2)
    assert info.get("launcher") is True, info  # forked from the warm launcher
    backend_id = _press_start_training(s, pid)  # a second press while it runs starts nothing
    deadline = time.time() + 600
    while True:
        turns = httpx.get(base + "/status/json", timeout=10).json()["turns"]
        if turns and turns[0]["state"] != "running":
            break
        assert time.time() < deadline, turns
        time.sleep(1)
    elapsed = time.perf_counter() - t0
    print(f"\nfeedback turn from the button (sync -> train -> promote -> reload -> push): "
          f"{elapsed:.1f}s")
    assert len(turns) == 1, turns  # one turn for two presses
    turn = turns[0]
    assert turn["state"] == "done" and turn["trigger"] == "label-studio: start training", turn
    assert turn["outcome"] == "promoted", turn["summary"]

    # The new version trained on exactly the final trainable annotations, promoted over the
    # constant champion.
    new = str(registry.get_champion(s).version)
    assert new != loop["champion"]
    tags = registry.get_version(s, new).tags
    rows = labels_store.training_rows(s)
    assert dict(zip(rows["text"], rows["label"])) == loop["expected"]
    trainable, _ = challenger.human_split(rows, s.feedback.holdout_fraction)
    assert tags["labelloop.human_digest"] == challenger.human_digest(trainable)

    # The running service answers with it (the turn called /admin/reload).
    answer = httpx.post(base + "/classify", json={"text": "what a lovely day"}, timeout=30).json()
    assert str(answer["model_version"]) == new, answer

    # Pending tasks (no annotation, incl. the one whose annotation was deleted) got its predictions.
    client = L.connect(s)
    for text, task in _tasks(client, pid).items():
        versions = _pred_versions(task)
        if text in loop["annotated"]:
            assert new not in versions
        else:
            assert new in versions, (text, versions)
    assert str(client.projects.get(id=pid).model_version) == new
    # Where annotators look in Label Studio: the instructions and the Model card.
    project = client.projects.get(id=pid)
    assert f"v{new}" in project.expert_instruction and "/status" in project.expert_instruction
    assert f"v{new}" in (client.ml.get(id=backend_id).description or "")

    # The status page, in a real browser: the turn, its outcome and reason, the versions.
    page = browser_page
    page.goto(base + "/status")
    row = page.locator(f"tr.turn[data-turn='{turn['id']}']")
    assert "promoted" in row.locator("td.outcome").inner_text()
    assert "paired bootstrap" in row.locator("td.summary").inner_text()
    champion_row = page.locator("#versions tr.champion")
    assert champion_row.count() == 1 and f"v{new}" in champion_row.inner_text()
    assert page.locator("#curve circle").count() >= 1
    assert f"Serving version {new}" in page.locator("#serving").inner_text()
