"""A person in Argilla's UI: Playwright drives Debian's Chromium (/usr/bin/chromium) against the
real Argilla of the session (`argilla_server`).

An annotator (not the owner) logs in, opens the dataset, sees the model's suggestion (its label
preselected, its score and its agent, the model version), picks another label, submits, and the
answer arrives in the labels store (pulled by annotation.argilla.sync_dataset, as the feedback
pipeline does), with the suggestion shown as provenance.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from labelloop import labels_store
from labelloop.settings import Settings
from labelloop.tasks import Prediction
from tests.integration.test_browser import browser_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
TEXT = "The flight was delayed three hours and nobody told us anything."


def test_annotator_changes_a_suggestion_in_argillas_ui(argilla_server, tmp_path, browser_page):
    import argilla as rg

    from playwright.sync_api import expect

    from annotation import argilla as A

    s = Settings(data_dir=str(tmp_path / "data"), argilla={
        **argilla_server.argilla_overrides()["argilla"], "dataset": f"ui-{uuid.uuid4().hex[:8]}"})
    client = A.connect(s)
    ds, info = A.ensure_dataset(s, client)
    guess = Prediction("positive", 0.87, {"negative": 0.05, "neutral": 0.08, "positive": 0.87})
    A._log(ds, [A.build_record(TEXT, guess, "3", rank=0)])
    name = f"ui-{uuid.uuid4().hex[:6]}"
    user = rg.User(username=name, password="annotator-pass", role="annotator", client=client).create()
    client.workspaces(s.argilla.workspace).add_user(user)

    page = browser_page
    base = A.argilla_url(s)
    page.goto(f"{base}/sign-in")
    page.fill("input[name=Username]", name)
    page.fill("input[name=Password]", "annotator-pass")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/sign-in" not in url)

    page.goto(f"{base}/dataset/{info.id}/annotation-mode")
    page.get_by_text(TEXT).first.wait_for()
    # The suggestion: "positive" preselected, with its score (the UI shows one decimal) and the
    # model version as its agent.
    page.locator("label.label-active[for=label_positive]").wait_for()
    # Retrying expect, not one look: the form may render again while the record loads. Rendered
    # text (innerText): textContent runs the score, "Suggestion" and the agent together.
    expect(page.locator("body")).to_contain_text(re.compile(r"0\.9\s+Suggestion\s+3\b"),
                                                 timeout=60_000, use_inner_text=True)
    page.locator("label[for=label_negative]").click()
    page.locator("label.label-active[for=label_negative]").wait_for()
    page.locator("button.button--submit").click()

    deadline = time.time() + 30
    while True:
        report = A.sync_dataset(s)
        if report["responses"] == 1 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert report["responses"] == 1 and not report["skipped"], report
    rows = labels_store.training_rows(s, source="argilla")
    assert rows["text"].tolist() == [TEXT] and rows["label"].tolist() == ["negative"]
    assert rows["annotator"].tolist() == [name]
    assert rows["shown_label"].tolist() == ["positive"] and rows["changed"].tolist() == [1]
    assert rows["model_version"].tolist() == ["3"]
