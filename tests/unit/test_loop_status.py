"""The loop's turn records and the status page built from them (real SQLite stores and a real
MLflow registry in a temp dir; no server)."""

from __future__ import annotations

import pytest

from labelloop import loop_status, trigger
from labelloop.labels_store import LabelRecord, open_store
from labelloop.settings import Settings


@pytest.fixture()
def settings(tmp_path):
    return Settings(data_dir=str(tmp_path))


def test_turn_lifecycle_and_interrupted_turns(settings):
    assert loop_status.turns(settings) == [] and "no training run" in loop_status.describe(None)
    with trigger.feedback_lock(settings, 3):
        t = loop_status.start_turn(settings, 3, "cli")
        loop_status.set_stage(settings, t, "train", 0.5)
        [row] = loop_status.turns(settings, 3)
        assert row["state"] == "running" and row["stage"] == "train" and row["progress"] == 0.5
        assert "stage train (50%)" in loop_status.describe(row)
    # Nobody holds the lock any more: a turn still marked running was killed.
    assert loop_status.turns(settings, 3)[0]["state"] == "interrupted"
    t2 = loop_status.start_turn(settings, 3, "cli")
    loop_status.finish_turn(settings, t2, "promoted", "v2 promoted: better", {"seconds": 12.5})
    latest = loop_status.turns(settings, 3)[0]
    assert latest["state"] == "done" and latest["outcome"] == "promoted"
    assert latest["details"] == {"seconds": 12.5}
    assert "v2 promoted: better" in loop_status.describe(latest)
    assert loop_status.turns(settings, 99) == [] and loop_status.turn_count(settings) == 2


def test_status_page_shows_versions_turns_agreement_and_curve(settings):
    from labelloop import registry
    from services import status_page
    from tests.helpers import register_untrained_version

    v1 = register_untrained_version(settings, seed=0)
    c = registry.client(settings)
    c.set_model_version_tag(settings.registry.model_name, v1, "test_macro_f1", "0.61")
    with open_store(settings) as store:
        store.upsert_many([
            LabelRecord(source="label_studio", project="1", annotation_id=str(i), text=f"t{i}",
                        label="positive", updated_at=float(i), model_version=v1,
                        shown_label="positive" if i < 3 else "negative") for i in range(4)])
    t = loop_status.start_turn(settings, 1, "label-studio: start training")
    loop_status.finish_turn(settings, t, "kept", "v2 not promoted: <worse> beyond chance")
    data = status_page.collect(settings, serving_version=v1)
    [v] = data["versions"]
    assert v["champion"] and v["test_macro_f1"] == 0.61
    assert v["agreement"] == {"annotations": 4, "kept": 3, "agreement": 0.75}
    page = status_page.render(data)
    assert "75% of 4" in page and "&lt;worse&gt;" in page  # escaped, never raw HTML
    assert 'class="turn done"' in page and "<circle" in page
    assert 'http-equiv="refresh"' not in page  # only while a turn runs


def test_status_page_says_how_to_start_a_run_with_the_tools_in_use(settings):
    """No run yet: Label Studio users get the button and the command, Argilla users (no such
    button) the command."""
    from services import status_page

    data = status_page.collect(settings)
    assert data["tools"] == ["label-studio"] and data["turns"] == []
    page = status_page.render(data)
    assert "Start Training" in page and "labelloop feedback --train" in page
    argilla = status_page.render({**data, "tools": ["argilla"]})
    assert "Start Training" not in argilla and "labelloop feedback --train" in argilla
