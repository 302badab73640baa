"""The generation loop with the real servers: Label Studio (the session's `label_studio`
fixture) and the BentoML service as a real process (`bentoml serve`, through pipelines.demo),
on a tiny random causal LM whose first champion had one training step.

The data is the test's own: prompts (greetings and how-are-you questions) all answered by one
short phrase, PHRASE, which is also what annotators rewrite responses into. The first champion
(one step at a tiny learning rate) answers noise; a turn's challenger, trained for real, says
the phrase, so it is better on the frozen test split and on the held-out human responses, and
the turn deterministically PROMOTES it. Which prompts the turn holds out is a hash of the
prompt (labelloop.challenger.is_holdout): the test gives the roles accordingly (the accepted
noise and the preference pairs on trainable prompts, rewrites on held-out ones).

Setup makes the edit and compare projects and imports prompts with the champion's responses;
Label Studio asks the service for responses to tasks imported without one; annotations go
through the Label Studio API as annotators make them (an accepted response, rewrites, an update,
a delete, an empty response; pairwise left and right, an update, a tie, no choice) and reach the
store through the webhook; the export sync agrees. A `labelloop feedback` turn (SFT, then DPO
on the pairs) trains a new version that is promoted because it is better; the service
answers with it, and pending tasks show its responses. Then a person in a real browser rewrites a
pre-filled response and picks a side of a comparison, and both arrive in the store.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from labelloop import labels_store, registry
from labelloop.challenger import is_holdout
from tests.helpers import REPO_ROOT, demo_service, free_port, retry_ui, tiny_causal_lm
from tests.integration.test_browser import browser_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
ADMIN = "gen-ls-admin-token"
# What every prompt of the test's data is answered with, and what annotators rewrite into.
PHRASE = "I am fine, thank you."
HOLDOUT = 0.25  # feedback.holdout_fraction of the loop fixture
# A chat's later answer: its prompt holds the earlier turns (labelloop.generation.chat). Imported
# by hand below, answered by the service from its exact prompt, shown to the browser as turns.
CONV = ('[{"role":"user","content":"hi"},{"role":"assistant","content":"' + PHRASE + '"},'
        '{"role":"user","content":"how was your day"}]')
CONV_LAST_TURNS = f"Assistant: {PHRASE}\n\nUser: how was your day"


def phrase_dataset(path: Path) -> Path:
    """Sixty prompts, each answered with PHRASE, as a user's CSV (prompt/response columns).
    None of them is one of the prompts the test imports later without a response."""
    greetings = ["hi", "hey", "good morning", "good evening", "hey there", "hi friend"]
    questions = ["how are you", "how are you doing", "how is it going", "are you well",
                 "how do you feel", "how have you been", "what is up", "is all well",
                 "how was your day", "are you fine"]
    prompts = [f"{g} {q}" for g, q in itertools.product(greetings, questions)]
    pd.DataFrame({"prompt": prompts, "response": PHRASE}).to_csv(path, index=False)
    return path


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cli(*args, extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(extra or {})})
    return subprocess.run([sys.executable, "-m", "labelloop.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def untalkative_fixed(path: Path) -> Path:
    """The tiny random LM with its tied embeddings of the special tokens and of a newline set
    to zero: untrained, its greedy answer repeats the prompt's last token (a newline, or an
    end-of-turn token), which decodes to an empty response; now it says something."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        for i in set(tok.all_special_ids) | set(tok.convert_tokens_to_ids(tok.tokenize("\n"))):
            model.get_input_embeddings().weight[i].zero_()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loop(label_studio, tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-ls")
    base = untalkative_fixed(tiny_causal_lm(root / "tiny-base", layers=2, hidden=64))
    studio_cfg = label_studio.studio_overrides()["studio"]
    studio_cfg.update({"project_title": f"gen-{uuid.uuid4().hex[:8]}", "pool_size": 8})
    cfg = _merge(yaml.safe_load((REPO_ROOT / "configs" / "generation.yaml").read_text()), {
        "data_dir": str(root / "data"),
        "model": {"base": str(base), "max_length": 96},
        "dataset": {"path": str(phrase_dataset(root / "phrase.csv")), "max_train_rows": 80,
                    "max_test_rows": 16},
        # About 30 steps: enough for the tiny model to say PHRASE (seconds on a CPU).
        "training": {"method": "full", "learning_rate": 0.005, "batch_size": 8, "epochs": 5},
        "generation": {"max_new_tokens": 12},
        "evaluation": {"sample_predictions": 2},
        "studio": studio_cfg,
        "annotation": {"tools": ["label-studio"]},
        "serving": {"port": free_port(), "poll_interval_s": 2.0, "admin_token": ADMIN,
                    "webhook_secret": "gen-secret", "ls_basic_auth_password": "gen-basic"},
        "feedback": {"min_new_labels": 3, "holdout_fraction": HOLDOUT,
                     "generation": {"min_preference_pairs": 1}},
    })

    def first_champion(settings) -> str:
        from pipelines import demo

        # One step at a tiny learning rate: a near-random model, whose greedy responses are
        # not empty (a few real steps teach a model this small to answer end-of-turn first).
        r = cli("train", "--config", str(settings.data_path / demo.SETTINGS_FILE),
                extra={"ZENML_CONFIG_PATH": os.environ["ZENML_CONFIG_PATH"],
                       "LABELLOOP__TRAINING__MAX_STEPS": "1",
                       "LABELLOOP__TRAINING__LEARNING_RATE": "0.000001"})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return str(registry.get_champion(settings).version)

    with demo_service(root, cfg, first_champion) as (settings_file, settings, champion):
        yield {"root": root, "settings_file": settings_file, "settings": settings,
               "champion": champion}


def _tasks(client, pid):
    """prompt -> task: the exact prompt (a conversation's is kept beside the turns shown)."""
    from annotation.config import task_prompt

    return {task_prompt(t.data): t for t in client.tasks.list(project=pid, fields="all")}


def _preds(task):
    return [p if isinstance(p, dict) else p.dict() for p in (task.predictions or [])]


def textarea(text, origin=None):
    item = {"from_name": "response", "to_name": "prompt", "type": "textarea",
            "value": {"text": [text]}}
    return [{**item, "origin": origin} if origin else item]


def rated(stars):
    return [{"from_name": "rating", "to_name": "prompt", "type": "rating",
             "value": {"rating": stars}}]


def pairwise(side):
    return [{"from_name": "comparison", "to_name": "response_a", "type": "pairwise",
             "value": {"selected": side}}]


def verdict(value):
    return [{"from_name": "verdict", "to_name": "prompt", "type": "choices",
             "value": {"choices": [value]}}]


def _wait(check, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_generation_loop_with_label_studio(loop):
    from annotation import labelstudio as L
    from annotation.sync import sync_projects
    from pipelines import demo

    s, v1 = loop["settings"], loop["champion"]
    out = demo.setup_project(s)
    edit_pid, compare_pid = out["projects"]["edit"], out["projects"]["compare"]
    assert out["import"]["imported"] == 8 and out["ml_backend"]["url"].endswith("/ls")
    again = demo.setup_project(s)  # idempotent: same projects, nothing imported
    assert again["projects"] == out["projects"] and again["import"]["imported"] == 0
    client = L.connect(s)
    edit = _tasks(client, edit_pid)
    compare = _tasks(client, compare_pid)
    assert len(edit) == 8 and 1 <= len(compare) <= 8
    for task in edit.values():  # pre-filled with the champion's response
        (p,) = _preds(task)
        assert str(p["model_version"]) == v1 and p["result"][0]["type"] == "textarea"
    for task in compare.values():
        d = task.data
        assert d["response_a"].strip() != d["response_b"].strip()
        assert d["version_a"] == d["version_b"] == v1

    # Three prompts imported without a response: Label Studio asks the service (/ls/predict);
    # the conversation's task shows its turns and keeps its exact prompt beside them.
    from annotation.config import prompt_data

    extra = ["hello how are you", "tell me a joke", CONV]
    client.projects.import_tasks(id=edit_pid, request=[{"data": prompt_data(p)} for p in extra])
    L.retrieve_predictions(s, edit_pid)
    edit = _tasks(client, edit_pid)
    for p in extra:
        (pred,) = _preds(edit[p])
        assert str(pred["model_version"]) == v1 and isinstance(
            pred["result"][0]["value"]["text"][0], str)

    assert edit[CONV].data["prompt"] == "User: hi\n\n" + CONV_LAST_TURNS

    # Annotators at work, through the API (the conversation is left for the browser). The
    # accepted one: a task with a non-empty response on a prompt the turn trains on (the
    # champion's noise, held out, would favour the champion); rewrites first on held-out
    # prompts, where the turn compares the two versions.
    api = [p for p in edit if p != CONV]
    held = {p: is_holdout(p, HOLDOUT) for p in api}
    shown = {p: _preds(edit[p])[0] for p in api}
    accepted = next(p for p in api
                    if shown[p]["result"][0]["value"]["text"][0].strip() and not held[p])
    prompts = [accepted] + sorted((p for p in api if p != accepted), key=lambda p: not held[p])
    assert held[prompts[1]] and held[prompts[2]], ("the data should put two edit prompts in "
                                                   "the held-out share", held)
    ann = client.annotations.create
    ann(id=edit[prompts[0]].id, result=shown[prompts[0]]["result"],
        parent_prediction=shown[prompts[0]]["id"])                                # accepted
    ann(id=edit[prompts[1]].id, result=textarea(PHRASE, "prediction-changed") + rated(2),
        parent_prediction=shown[prompts[1]]["id"])                       # rewritten, rated 2/5
    a3 = ann(id=edit[prompts[2]].id, result=textarea("Hi.", "prediction-changed"),
             parent_prediction=shown[prompts[2]]["id"])
    a4 = ann(id=edit[prompts[3]].id, result=textarea("Something."),
             parent_prediction=shown[prompts[3]]["id"])
    ann(id=edit[prompts[4]].id, result=textarea("   "))                           # empty
    ann(id=edit[prompts[5]].id, result=textarea(PHRASE))
    # Preference pairs (left/right) on trainable prompts: the DPO trains on them, and two
    # samples of the first champion's noise held out would decide by chance.
    cmp = sorted(compare, key=lambda p: is_holdout(p, HOLDOUT))
    assert not any(is_holdout(p, HOLDOUT) for p in cmp[:2]), cmp
    c1 = ann(id=compare[cmp[0]].id, result=pairwise("left"))
    if len(cmp) > 1:
        ann(id=compare[cmp[1]].id, result=pairwise("right"))
    if len(cmp) > 2:
        ann(id=compare[cmp[2]].id, result=verdict("tie"))
    if len(cmp) > 3:
        ann(id=compare[cmp[3]].id, result=[])                                     # no choice
    time.sleep(0.2)
    client.annotations.update(id=a3.id, result=textarea(PHRASE))
    client.annotations.update(id=c1.id, result=pairwise("right"))                 # changed mind
    client.annotations.delete(id=a4.id)
    final_responses = {prompts[0]: shown[prompts[0]]["result"][0]["value"]["text"][0].strip(),
                       prompts[1]: PHRASE, prompts[2]: PHRASE, prompts[5]: PHRASE}
    b = {p: compare[p].data for p in cmp}
    final_prefs = {cmp[0]: ("b", b[cmp[0]]["response_b"].strip())}
    if len(cmp) > 1:
        final_prefs[cmp[1]] = ("b", b[cmp[1]]["response_b"].strip())
    if len(cmp) > 2:
        final_prefs[cmp[2]] = ("tie", b[cmp[2]]["response_a"].strip())

    def store_state():
        with labels_store.open_store(s) as store:
            rows = store.rows(status="active")
        responses = {r.text: r.label for r in rows.itertuples() if r.kind == "response"}
        prefs = {r.text: (r.choice, r.label) for r in rows.itertuples() if r.kind == "preference"}
        ratings = {r.text: r.rating for r in rows.itertuples()
                   if r.kind == "response" and pd.notna(r.rating)}
        return responses, prefs, ratings, rows

    final_ratings = {prompts[1]: 2}
    # The webhooks write them as they happen ...
    expected = (final_responses, final_prefs, final_ratings)
    try:
        _wait(lambda: store_state()[:3] == expected, 40, "webhook rows")
    except AssertionError:
        assert store_state()[:3] == expected  # shows the difference
    # ... and the export sync agrees (nothing new, nothing lost).
    report = sync_projects(s)
    assert report["outcomes"].get("inserted", 0) == 0 and report["deleted"] == 0, report
    responses, prefs, ratings, rows = store_state()
    assert (responses, prefs, ratings) == expected
    reasons = " | ".join(r["reason"] for r in report["skipped"])
    assert "the response is empty" in reasons
    if len(cmp) > 3:
        assert "no choice made" in reasons
    by_prompt = rows[rows["kind"] == "response"].set_index("text")
    assert by_prompt.loc[prompts[0], "changed"] == 0 and by_prompt.loc[prompts[0],
                                                                      "edit_distance"] == 0
    assert by_prompt.loc[prompts[1], "changed"] == 1 and by_prompt.loc[prompts[1],
                                                                      "edit_distance"] > 0
    assert set(by_prompt["model_version"]) == {v1}
    # `labelloop labels export` gives the rating with its response (empty where none was given).
    exported = loop["root"] / "labels.jsonl"
    r = cli("labels", "export", "--config", str(loop["settings_file"]), "-o", str(exported))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [json.loads(x) for x in exported.read_text().splitlines()]
    assert {x["text"]: x["rating"] for x in lines if x["kind"] == "response"} == {
        p: final_ratings.get(p) for p in final_responses}

    # A feedback turn: SFT on the human responses, DPO on the pairs, judged, promoted.
    r = cli("feedback", "--config", str(loop["settings_file"]), "--reason", "test",
            extra={"ZENML_CONFIG_PATH": os.environ["ZENML_CONFIG_PATH"]})
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-5000:]
    assert "decision       retrain" in text, text[-3000:]
    line = next(x for x in text.splitlines() if x.startswith("new version"))
    reason = text.split(line, 1)[1].splitlines()[1]
    print("\n" + line + "\n" + reason)
    v2 = re.search(r"new version\s+(\d+)", line).group(1)
    assert v2 != v1
    tags = registry.get_version(s, v2).tags
    assert tags["labelloop.train_rule"] == "sft+dpo"  # two trainable pairs >= min_preference_pairs
    # The live quality signals of v1 are in MLflow (the turn's sync logs them).
    runs = registry.client(s).search_runs(
        [registry.ensure_experiment(s)], filter_string="tags.`labelloop.kind` = 'agreement'")
    assert any(f"accepted_unedited/v{v1}" in run.data.metrics for run in runs)
    # Promoted, for the reason it should be: better on the held-out human responses.
    assert line.strip().endswith("promoted to champion"), text[-3000:]
    assert str(registry.get_champion(s).version) == v2
    assert "better on held-out human data" in reason, reason
    assert "service: reloaded" in text, text[-3000:]

    # The service answers with the new version (the turn told it to reload).
    url = demo.service_url(s)

    def served(prompt):
        got = httpx.post(f"{url}/generate", json={"prompt": prompt}, timeout=60)
        assert got.status_code == 200, got.text
        return got.json()

    def serving_v2():
        try:  # a reload may answer 503 for a moment
            got = httpx.post(f"{url}/generate", json={"prompt": extra[0]}, timeout=60)
        except httpx.TransportError:
            return False
        return got.status_code == 200 and got.json()["model_version"] == v2

    _wait(serving_v2, 60, f"the service to serve v{v2}")

    # Pending edit tasks carry a prediction of the new version, its response (what the service
    # answers), not the first champion's; answered tasks keep what their annotator saw.
    edit = _tasks(client, edit_pid)
    answered = {prompts[i] for i in (0, 1, 2, 4, 5)}
    new_response = {}
    for p, task in edit.items():
        by_version = {str(x["model_version"]): x["result"][0]["value"]["text"][0]
                      for x in _preds(task)}
        if p in answered:
            assert list(by_version) == [v1], (p, by_version)
            continue
        assert set(by_version) == {v1, v2}, (p, by_version)
        new_response[p] = by_version[v2]
        assert new_response[p].strip() and new_response[p] != by_version[v1], (p, by_version)
        assert served(p)["text"] == new_response[p], p
    assert prompts[3] in new_response  # its annotation was deleted: pending again
    # Pending comparisons show the new champion's response (A) against what they showed (B).
    pending = {p: t.data for p, t in _tasks(client, compare_pid).items()
               if p not in final_prefs and p != (cmp[3] if len(cmp) > 3 else None)}
    assert pending, "no pending comparison left to check"
    for p, d in pending.items():
        assert (d["version_a"], d["version_b"]) == (v2, v1), (p, d)
        assert d["response_a"] == served(p)["text"] and d["response_b"] == b[p]["response_a"], d
    loop.update(edit_pid=edit_pid, compare_pid=compare_pid, answered=answered,
                compared=set(final_prefs) | ({cmp[3]} if len(cmp) > 3 else set()))


def test_annotator_rewrites_and_compares_in_the_browser(loop, browser_page, label_studio):
    from playwright.sync_api import expect

    from annotation import labelstudio as L
    from annotation.sync import sync_projects

    s = loop["settings"]
    client = L.connect(s)
    edit = _tasks(client, loop["edit_pid"])
    prompt = CONV  # pending: the API annotations left it; the page shows its turns
    compare = _tasks(client, loop["compare_pid"])
    pair = next((p for p in compare if p not in loop["compared"]), None)
    page = browser_page
    page.goto(f"{label_studio.url}/user/login/")
    page.fill("input[name=email]", label_studio.username)
    page.fill("input[name=password]", label_studio.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)

    # Edit: the response is pre-filled; rewrite it and submit.
    rewrite = "Thank you for asking, I am well."
    page.goto(f"{label_studio.url}/projects/{loop['edit_pid']}/data?task={edit[prompt].id}")
    page.get_by_text(CONV_LAST_TURNS).first.wait_for()

    # The prediction pre-fills the response (an editable region): pencil, rewrite, save; again
    # from the pencil if the panel renders anew meanwhile (CI: Save detached, a minute lost).
    def rewrite_response():
        page.locator("[data-testid=htx-textbox-edit-button]").first.click(timeout=20_000)
        page.locator("[data-testid=htx-textbox-input]").first.fill(rewrite, timeout=20_000)
        page.locator("[data-testid=htx-textbox-save]").first.click(timeout=20_000)
        expect(page.get_by_text(rewrite).first).to_be_visible(timeout=20_000)

    retry_ui(rewrite_response)
    page.get_by_role("button", name=re.compile("^Submit", re.I)).first.click()
    page.get_by_text("Annotation saved successfully").first.wait_for()

    if pair is not None:
        page.goto(f"{label_studio.url}/projects/{loop['compare_pid']}/data?task="
                  f"{compare[pair].id}")
        # The labeling panel: Label Studio makes both responses clickable (Pairwise); the
        # second one is B (the data table beside it shows the same texts, not clickable).
        sides = page.locator("[class*='hover:bg-primary-emphasis-subtle']")
        # The panel renders again once the data manager's tab loads (seen under load in CI:
        # both sides there, then none for a moment): wait for the two, not a single look.
        expect(sides).to_have_count(2, timeout=60_000)
        sides.nth(1).click()
        page.get_by_role("button", name=re.compile("^Submit", re.I)).first.click()
        page.get_by_text("Annotation saved successfully").first.wait_for()

    def arrived():
        sync_projects(s)
        with labels_store.open_store(s) as store:
            rows = store.rows(status="active")
        got_edit = any((r.text, r.label) == (prompt, rewrite) and r.changed == 1
                       for r in rows.itertuples() if r.kind == "response")
        got_pair = pair is None or any(
            r.text == pair and r.choice == "b" for r in rows.itertuples()
            if r.kind == "preference")
        return got_edit and got_pair

    _wait(arrived, 30, "the browser's answers in the store")
