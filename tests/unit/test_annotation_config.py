"""Label config generation/parsing, uncertainty ordering, task building, LS record conversion."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.config import (
    HINT_KEY, LabelConfigError, check_label_config, classification_config, label_config_for,
    parse_label_config,
)
from annotation.labelstudio import (
    NUMERIC_FIELDS, build_tasks, ensure_numeric_columns, prediction_for, uncertainty_order,
)
from annotation.records import chosen, project_id_of, record_from_annotation
from labelloop.tasks import ClassificationTask, Prediction

TASK = ClassificationTask(name="sentiment", labels=("negative", "neutral", "positive"))


def test_generated_config_round_trips():
    xml = label_config_for(TASK)
    parsed = parse_label_config(xml)
    assert parsed.controls["label"]["type"] == "choices"
    assert parsed.controls["label"]["labels"] == list(TASK.labels)
    assert parsed.objects == {"text": "text"}
    check_label_config(xml, TASK)  # no error


# The config labelloop generated before the model's-guess header: projects made with it stay valid.
OLD_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Header value="sentiment: pick one"/>
  <Choices name="label" toName="text" choice="single-radio" showInline="true" required="true">
    <Choice value="negative"/>
    <Choice value="neutral"/>
    <Choice value="positive"/>
  </Choices>
</View>
"""


def test_config_shows_the_models_guess_and_old_configs_still_pass():
    import xml.etree.ElementTree as ET

    xml = label_config_for(TASK)
    headers = [h for h in ET.fromstring(xml).iter("Header")]
    hint = [h for h in headers if h.get("value") == f"${HINT_KEY}"]
    assert len(hint) == 1
    # no `name`: Label Studio does not make model_hint a data field every task must carry
    assert hint[0].get("name") is None
    assert parse_label_config(xml).objects == {"text": "text"}
    check_label_config(xml, TASK)
    check_label_config(OLD_CONFIG, TASK)
    with pytest.raises(LabelConfigError, match="do not match"):
        check_label_config(OLD_CONFIG.replace('<Choice value="neutral"/>', ""), TASK)


def test_labels_with_quotes_are_escaped():
    task = ClassificationTask(name='a "b"', labels=('it\'s', 'x<y', '"q"'))
    parsed = parse_label_config(classification_config(task))
    assert parsed.controls["label"]["labels"] == list(task.labels)


@pytest.mark.parametrize("xml, match", [
    ("<View><Text name='text' value='$text'/></View>", "no <Choices"),
    ("<View", "not valid XML"),
    (classification_config(ClassificationTask(name="x", labels=("a", "b"))), "do not match"),
    ("<View><Text name='t' value='$other'/><Choices name='label' toName='t'>"
     "<Choice value='negative'/><Choice value='neutral'/><Choice value='positive'/></Choices></View>",
     "must point at"),
])
def test_mismatched_configs_are_refused(xml, match):
    with pytest.raises(LabelConfigError, match=match):
        check_label_config(xml, TASK)


def test_uncertainty_and_margin_orderings():
    probs = np.array([
        [0.90, 0.05, 0.05],  # confident
        [0.40, 0.35, 0.25],  # low top, small margin
        [0.50, 0.49, 0.01],  # higher top, tiny margin
        [0.34, 0.34, 0.32],  # least certain either way
    ])
    assert uncertainty_order(probs, "uncertainty").tolist() == [3, 1, 2, 0]
    assert uncertainty_order(probs, "margin").tolist() == [3, 2, 1, 0]
    r1 = uncertainty_order(probs, "random", seed=1)
    assert sorted(r1.tolist()) == [0, 1, 2, 3]
    assert r1.tolist() == uncertainty_order(probs, "random", seed=1).tolist()
    with pytest.raises(ValueError):
        uncertainty_order(probs, "nope")


def _pred(p):
    probs = dict(zip(TASK.labels, p))
    label = max(probs, key=probs.get)
    return Prediction(label=label, score=probs[label], probabilities=probs)


def test_build_tasks_orders_and_attaches_predictions():
    texts = ["sure", "unsure"]
    tasks = build_tasks(texts, [_pred([0.1, 0.1, 0.8]), _pred([0.4, 0.3, 0.3])], "5", "uncertainty")
    assert [t["data"]["text"] for t in tasks] == ["unsure", "sure"]
    assert tasks[0]["predictions"][0] == prediction_for("negative", 0.4, "5")
    assert tasks[0]["data"]["rank"] == 0
    assert build_tasks([], [], "5", "uncertainty") == []


def test_task_fields_are_json_numbers_and_the_hint_names_the_guess():
    import json

    preds = [_pred(np.array(p, dtype=np.float32)) for p in
             ([0.1, 0.1, 0.8], [0.4, 0.3, 0.3], [0.2, 0.5, 0.3])]
    tasks = build_tasks(["a", "b", "c"], preds, "5", "uncertainty")
    for t in tasks:
        for name in NUMERIC_FIELDS:  # plain numbers: never strings, never numpy scalars
            assert type(t["data"][name]) is (int if name == "rank" else float), name
    decoded = json.loads(json.dumps(tasks))  # what the SDK sends
    assert [t["data"]["rank"] for t in decoded] == [0, 1, 2]
    assert decoded[0]["data"]["uncertainty"] == pytest.approx(0.6)
    assert decoded[0]["data"]["margin"] == pytest.approx(0.1)
    assert decoded[0]["data"][HINT_KEY].startswith("Model v5's guess: negative, 40% sure.")
    assert decoded[2]["data"][HINT_KEY].startswith("Model v5's guess: positive, 80% sure.")


class FakeViews:
    def __init__(self, views):
        self.views, self.calls = views, []

    def list(self, project):
        return list(self.views)

    def create(self, project, data):
        self.calls.append(("create", project, data))

    def update(self, id, project, data):
        self.calls.append(("update", id, project, data))


def test_numeric_columns_default_tab_and_existing_tabs():
    from types import SimpleNamespace

    number = {f"tasks:data.{n}": "Number" for n in NUMERIC_FIELDS}
    fresh = SimpleNamespace(views=FakeViews([]))
    assert ensure_numeric_columns(fresh, 3) == 1
    assert fresh.views.calls == [("create", 3, {"title": "Default", "columnsDisplayType": number})]
    mine = SimpleNamespace(id=7, data={"title": "Mine", "ordering": ["tasks:data.rank"],
                                       "columnsDisplayType": {"tasks:data.rank": "String"}})
    done = SimpleNamespace(id=8, data={"title": "Done", "columnsDisplayType": dict(number)})
    client = SimpleNamespace(views=FakeViews([mine, done]))
    assert ensure_numeric_columns(client, 3) == 1
    (_, view_id, project, data), = client.views.calls
    assert (view_id, project, data["title"], data["ordering"]) == ("7", 3, "Mine", ["tasks:data.rank"])
    # the type someone chose stays; the missing ones are added
    assert data["columnsDisplayType"] == {**number, "tasks:data.rank": "String"}


def test_record_conversion():
    task = {"id": 9, "data": {"text": "hi"}, "project": 2}
    pred = {"id": 1, "model_version": "4", "score": 0.7, "result": prediction_for(
        "positive", 0.7, "4")["result"]}
    ann = {"id": 3, "task": 9, "project": 2, "completed_by": 5, "parent_prediction": 1,
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z",
           "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                       "value": {"choices": ["neutral"]}, "origin": "prediction-changed"}],
           "prediction": pred}
    r = record_from_annotation(TASK, 2, ann, task, via="test")
    assert (r.text, r.label, r.task_id, r.annotator, r.model_version, r.shown_label, r.changed) \
        == ("hi", "neutral", "9", "5", "4", "positive", True)
    multi = dict(ann, result=[{"type": "choices", "from_name": "label",
                               "value": {"choices": ["neutral", "positive"]}}])
    assert record_from_annotation(TASK, 2, multi, task, via="t").status == "invalid"
    notext = record_from_annotation(TASK, 2, ann, {"id": 9, "data": {"image": "x"}}, via="t")
    assert notext.status == "invalid" and "no 'text'" in notext.reason
    assert chosen([{"type": "textarea"}]) is None
    assert project_id_of("12.1700000000") == 12 and project_id_of({"id": 3}) == 3
    assert project_id_of(True) is None and project_id_of("x") is None


def test_the_hint_names_the_guess_as_the_choices_show_it():
    # With task.display_names the choices read "Negative (1-2 stars)": the sentence above them
    # must name the same thing, while the prediction (what is stored) keeps the label.
    shown = {"negative": "Negative (1-2 stars)"}.get
    tasks = build_tasks(["a", "b"], [_pred([0.7, 0.2, 0.1]), _pred([0.1, 0.2, 0.7])], "2",
                        "uncertainty", shown=lambda label: shown(label, label))
    hints = sorted(t["data"][HINT_KEY] for t in tasks)
    assert hints[0].startswith("Model v2's guess: Negative (1-2 stars), 70% sure.")
    assert hints[1].startswith("Model v2's guess: positive, 70% sure.")
    assert {t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks} \
        == {"negative", "positive"}
