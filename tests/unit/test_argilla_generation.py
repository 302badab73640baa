"""Argilla generation answers -> labels store, without a server: one response gives its edited
response and, when compared, its preference; webhook replays and an update that drops the
preference end as the pull sync would. The real server is tests/integration/test_argilla.py."""

from __future__ import annotations

from annotation import argilla_webhook as W
from annotation.argilla_records import PREFERENCE_SUFFIX, records_from_response
from labelloop.labels_store import open_store
from labelloop.settings import Settings
from labelloop.tasks import task_from_dict

DATASET = "0b6f3c1e-0000-4000-8000-000000000002"
TASK = task_from_dict({"type": "generation", "name": "chat"})
SHOWN, OTHER = "I am fine, thanks.", "No idea."


def response(values, rid="r-1", status="submitted", updated="2026-12-02T05:00:00.000001"):
    return {"id": rid, "values": values, "status": status, "updated_at": updated,
            "inserted_at": "2026-12-02T04:59:00", "user": {"id": "u-1", "username": "ann"},
            "record": {"id": "rec-1", "fields": {"prompt": "how are you?", "response_a": SHOWN,
                                                 "response_b": OTHER},
                       "metadata": {"model_version": "4", "suggested_label": SHOWN,
                                    "version_b": "3"},
                       "dataset": {"id": DATASET, "name": "gen"}}}


def convert(values, **kw):
    r = response(values, **kw)
    return records_from_response(TASK, DATASET, r, r["record"], r["user"], via="sync")


def test_accepted_rewritten_preferred_and_bad_answers():
    (kept,) = convert({"response": {"value": SHOWN}})
    assert (kept.kind, kept.text, kept.label, kept.shown_label, kept.model_version) == (
        "response", "how are you?", SHOWN, SHOWN, "4")
    assert kept.edit_distance == 0.0
    edited, pref = convert({"response": {"value": "Fine, and you?"},
                            "preference": {"value": "b"}})
    assert edited.edit_distance > 0 and edited.annotation_id == "r-1"
    assert pref.annotation_id == "r-1" + PREFERENCE_SUFFIX and pref.kind == "preference"
    assert (pref.label, pref.rejected, pref.choice) == (OTHER, SHOWN, "b")
    assert (pref.chosen_version, pref.rejected_version) == ("3", "4")
    (empty,) = convert({"response": {"value": "   "}})
    assert empty.status == "invalid" and "empty" in empty.reason
    (gone,) = convert({"response": {"value": SHOWN}}, status="discarded")
    assert gone.status == "invalid" and gone.reason == "discarded by the annotator"
    (draft,) = convert({"response": {"value": SHOWN}}, status="draft")
    assert draft.extra["draft"]


def test_webhook_replays_and_a_dropped_preference(tmp_path):
    s = Settings(data_dir=str(tmp_path), task={"type": "generation", "name": "chat"})
    W.write_hook(s, {"id": "h", "url": "u", "secret": "x", "dataset_id": DATASET})
    first = {"type": "response.created", "data": response(
        {"response": {"value": "Fine!"}, "preference": {"value": "a"}})}
    later = {"type": "response.updated", "data": response(
        {"response": {"value": "Fine!"}}, updated="2026-12-02T05:01:00")}
    for ev in (first, later, first, later):  # replays, out of order
        W.handle_event(s, ev)
    with open_store(s) as store:
        rows = store.rows(source="argilla").set_index("annotation_id")
        assert rows.loc["r-1", "status"] == "active" and rows.loc["r-1", "label"] == "Fine!"
        assert rows.loc["r-1" + PREFERENCE_SUFFIX, "status"] == "deleted"
        assert store.preference_rows().empty
    W.handle_event(s, {"type": "response.deleted", "data": response({})})
    with open_store(s) as store:
        assert set(store.rows(source="argilla")["status"]) == {"deleted"}


def test_annotate_import_feeds_every_tool_that_is_on(tmp_path, monkeypatch):
    from annotation import argilla, cli, labelstudio

    monkeypatch.setattr(labelstudio, "import_pool", lambda s, file=None: {"ls": file})
    monkeypatch.setattr(argilla, "log_pool", lambda s, file=None: {"ar": file})
    both = Settings(data_dir=str(tmp_path), annotation={"tools": ["label-studio", "argilla"]})
    assert cli.import_all(both, "p.txt") == {"label-studio": {"ls": "p.txt"},
                                             "argilla": {"ar": "p.txt"}}
    only = Settings(data_dir=str(tmp_path), annotation={"tools": ["argilla"]})
    assert cli.import_all(only, "p.txt") == {"ar": "p.txt"}


def test_generation_pool_reads_prompts_of_the_family_data(tmp_path):
    """The pool of a generation task skips the prompts of its prompt/response data, and
    `pool.from_training_split` gives the training split's prompts (not classification's texts)."""
    import pandas as pd

    from annotation import pool
    from labelloop.cleaning import Cleaning

    rows = [(f"question number {i}?", f"answer {i}") for i in range(40)]
    pd.DataFrame(rows, columns=["prompt", "response"]).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = {"data_dir": str(tmp_path / "d"), "task": {"type": "generation", "name": "chat"},
           "dataset": {"path": str(tmp_path / "pairs.csv"), "encoding": "utf-8"}}
    s = Settings(**cfg)
    assert pool.labelled_texts(s) == {p for p, _ in rows}
    built = pool.build_pool(s, Cleaning(), texts=["a new prompt", rows[0][0]])
    assert built.texts == ["a new prompt"] and built.labelled == 1
    assert pool.summary(built.report()).startswith("pool the given texts: 2 prompts read, 1 usable")
    split = Settings(**cfg, pool={"from_training_split": True})
    texts, where = pool.raw_pool(split)
    assert where.startswith("the labelled training split")
    assert texts and set(texts) < {p for p, _ in rows} and len(texts) == len(set(texts))


def test_generation_records_carry_the_response_score_and_uncertainty(tmp_path):
    """The champion's response is scored (exp of minus its mean token NLL under the model): the
    suggestion's score, and `uncertainty` = 1 - score in the metadata, as for classification."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from annotation import argilla as A
    from tests.helpers import tiny_causal_lm

    base = tiny_causal_lm(tmp_path / "lm")
    gen = SimpleNamespace(model=AutoModelForCausalLM.from_pretrained(base).eval(),
                          tokenizer=AutoTokenizer.from_pretrained(base), version="7")
    s = Settings(data_dir=str(tmp_path / "d"), task={"type": "generation", "name": "chat"},
                 generation={"max_new_tokens": 6})
    prompts = ["hello how are you", "what is your name"]
    greedy, sampled = A.champion_responses(s, gen, prompts)
    scores = A.response_scores(s, gen, prompts, greedy)
    assert len(scores) == 2 and all(0.0 <= x <= 1.0 for x in scores)
    rec = A.build_generation_record(prompts[0], greedy[0] or "x", "7", sampled[0], "7", 0, scores[0])
    assert rec.metadata["uncertainty"] == round(1 - scores[0], 6)
    assert rec.metadata["suggested_score"] == round(scores[0], 6)
    (sug,) = list(rec.suggestions)
    assert sug.agent == "7" and sug.score == scores[0] and sug.question_name == "response"


def test_dataset_check_refuses_a_dataset_of_the_other_family():
    """The dataset check of each family: a classification dataset for a generation model (and
    the reverse, or a preference question with other choices) is one clear DatasetMismatch.
    (Datasets as the SDK describes them, without a server: the check reads names and kinds.)"""
    from types import SimpleNamespace as NS

    import pytest

    from annotation import argilla as A
    from labelloop.tasks import ClassificationTask

    class TextQuestion(NS):
        pass

    class LabelQuestion(NS):
        pass

    def ds(fields, *questions):
        return NS(name="d", settings=NS(fields=[NS(name=f) for f in fields],
                                        questions=list(questions)))

    clf_task = ClassificationTask(name="s", labels=["negative", "positive"])
    pref = LabelQuestion(name="preference", labels=dict(A.PREFERENCE_LABELS))
    gen = ds(["prompt", "response_a", "response_b"], TextQuestion(name="response"), pref)
    clf = ds(["text"], LabelQuestion(name="label", labels=["negative", "positive"]))
    A.check_dataset(gen, TASK)
    A.check_dataset(clf, clf_task)
    with pytest.raises(A.DatasetMismatch, match="is not a generation dataset"):
        A.check_dataset(clf, TASK)
    with pytest.raises(A.DatasetMismatch, match="no label question"):
        A.check_dataset(gen, clf_task)
    odd = ds(["prompt"], TextQuestion(name="response"),
             LabelQuestion(name="preference", labels=["left", "right"]))
    with pytest.raises(A.DatasetMismatch, match="'preference' question"):
        A.check_dataset(odd, TASK)


def test_a_conversation_record_shows_its_turns_and_is_read_back_exactly():
    from annotation.argilla import build_generation_record
    from annotation.argilla_records import record_prompt

    chat = ('[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},'
            '{"role":"user","content":"how are you?"}]')
    rec = build_generation_record(chat, SHOWN, "4", OTHER, "4")
    assert rec.fields["prompt"] == "User: hi\n\nAssistant: hello\n\nUser: how are you?"
    assert rec.metadata["conversation"] == chat
    plain = build_generation_record("how are you?", SHOWN, "4")
    assert plain.fields["prompt"] == "how are you?" and "conversation" not in plain.metadata
    r = response({"response": {"value": "Fine."}, "preference": {"value": "a"}})
    r["record"]["fields"]["prompt"] = rec.fields["prompt"]
    r["record"]["metadata"]["conversation"] = chat
    assert record_prompt(r["record"]) == chat
    rows = records_from_response(TASK, DATASET, r, r["record"], r["user"], via="sync")
    assert [x.text for x in rows] == [chat, chat]
