"""The real `feedback` pipeline for the generation family (real ZenML and MLflow stores, SFT and
DPO inside the turn) on a tiny random causal LM, without annotation tools: human responses and
preference pairs are written to the labels store as the webhook writes them.

Turn 1 keeps the champion by a setting (the fixed-margin rule with a margin no model reaches);
the same data again is not retrained on; turn 2 (forced, a stronger DPO) is judged by the
default paired rule and promoted because it is better on the held-out human answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from labelloop import labels_store, registry
from labelloop.labels_store import LabelRecord
from labelloop.settings import load_settings
from tests.helpers import free_port, tiny_causal_lm

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-feedback")
    base = tiny_causal_lm(root / "tiny-base", layers=2, hidden=64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({
        "PYTHONPATH": str(REPO), "ZENML_CONFIG_PATH": str(root / "zen"),
        "LABELLOOP_CONFIG": str(REPO / "configs" / "generation.yaml"),
        "LABELLOOP__DATA_DIR": str(root / "data"), "LABELLOOP__MODEL__BASE": str(base),
        "LABELLOOP__MODEL__MAX_LENGTH": "96", "LABELLOOP__DATASET__MAX_TRAIN_ROWS": "120",
        "LABELLOOP__DATASET__MAX_TEST_ROWS": "30", "LABELLOOP__TRAINING__BATCH_SIZE": "16",
        "LABELLOOP__TRAINING__METHOD": "full", "LABELLOOP__TRAINING__LEARNING_RATE": "0.003",
        "LABELLOOP__TRAINING__EPOCHS": "1", "LABELLOOP__GENERATION__MAX_NEW_TOKENS": "12",
        "LABELLOOP__EVALUATION__SAMPLE_PREDICTIONS": "3", "LABELLOOP__ANNOTATION__TOOLS": "[]",
        "LABELLOOP__SERVING__PORT": str(free_port()),  # nothing listens: reload is skipped
        "LABELLOOP__SERVING__ADMIN_TOKEN": "admin-token-for-tests",
        "LABELLOOP__FEEDBACK__MIN_NEW_LABELS": "4",
        "LABELLOOP__FEEDBACK__GENERATION__MIN_PREFERENCE_PAIRS": "3",
        "LABELLOOP__FEEDBACK__HOLDOUT_FRACTION": "0.3",
        "OMP_NUM_THREADS": "1",  # 2 shared cores: no OpenMP spin contention
    })
    settings = load_settings(env["LABELLOOP_CONFIG"], environ={
        k: v for k, v in env.items() if k.startswith("LABELLOOP__")})
    # A barely trained first champion (one step): something a real retrain can beat.
    r = cli(env, "train", extra={"LABELLOOP__TRAINING__MAX_STEPS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, env, settings


def cli(env, *args, extra=None):
    return subprocess.run([sys.executable, "-m", "labelloop.cli", *args],
                          env={**env, **(extra or {})}, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def add_answers(settings):
    """12 edits (the corpus's reference response as the final answer) and 8 pairwise choices
    (the reference chosen over a made-up answer), plus a tie that is no pair."""
    from labelloop.generation import steps

    old = os.environ.copy()
    train, test, _ = steps.load(settings)
    pool = train.drop_duplicates("prompt").sample(12, random_state=1)
    records = [LabelRecord(source="label_studio", project="1", annotation_id=f"e{i}", text=p,
                           label=r, kind="response", shown_label="I do not know.",
                           model_version="1", updated_at=float(100 + i))
               for i, (p, r) in enumerate(zip(pool["prompt"], pool["response"]))]
    records += [LabelRecord(source="label_studio", project="2", annotation_id=f"c{i}", text=p,
                            label=r, rejected=f"no idea {i}", choice="a" if i % 2 else "b",
                            kind="preference", model_version="1", updated_at=float(200 + i))
                for i, (p, r) in enumerate(zip(pool["prompt"][:8], pool["response"][:8]))]
    records.append(LabelRecord(source="label_studio", project="2", annotation_id="tie",
                               text=pool["prompt"].iloc[0], label="x", rejected="y", choice="tie",
                               kind="preference", model_version="1", updated_at=300.0))
    with labels_store.open_store(settings) as store:
        store.upsert_many(records)
    os.environ.clear()
    os.environ.update(old)
    return pool


def test_turns_sft_then_dpo_kept_by_rule_no_retrain_on_same_data_then_promoted(workspace):
    root, env, settings = workspace
    add_answers(settings)
    # Turn 1: SFT + DPO inside the turn; a margin nobody reaches keeps the champion.
    r = cli(env, "feedback", "--reason", "test", extra={
        "LABELLOOP__PROMOTION__RULE": "margin", "LABELLOOP__PROMOTION__MARGIN": "1.0"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "decision       retrain" in out and "new human labels since the last retrain" in out
    assert "training       SFT + DPO" in out and ">= feedback.generation.min_preference_pairs 3" in out
    assert "new version    2: not promoted" in out
    assert str(registry.get_champion(settings).version) == "1"
    v2 = registry.get_version(settings, "2")
    assert v2.tags["labelloop.train_rule"] == "sft+dpo" and "test_chrf" in v2.tags
    run = mlflow.tracking.MlflowClient(settings.tracking_uri).get_run(v2.run_id)
    assert run.data.params["preference_pairs"] == str(
        int(run.data.params["preference_pairs"]))  # logged
    assert 3 <= int(run.data.params["preference_pairs"]) <= 8  # the tie is no pair; some held out
    human = int(run.data.params["human_responses"])
    held = int(run.data.params["heldout_responses"])
    assert human + held == 12 and held >= 1
    assert "dpo_final_loss" in run.data.metrics

    # The same human data again: no retrain, and the decision says why.
    r = cli(env, "feedback", "--train")  # asked to train: still not on the same labels
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "decision       keep" in out and "identical to the last retrain's" in out
    assert len(registry.list_versions(settings)) == 2

    # Turn 2, forced, with a DPO strong enough to learn that "no idea ..." is the rejected kind
    # of answer: the default paired rule promotes it because it is better on the HELD-OUT pairs
    # (other prompts than it trained on), the test split being no worse (printed with both).
    r = cli(env, "feedback", "--reason", "test", extra={
        "LABELLOOP__FEEDBACK__FORCE_RETRAIN": "true",
        "LABELLOOP__FEEDBACK__GENERATION__DPO__LEARNING_RATE": "0.01",
        "LABELLOOP__FEEDBACK__GENERATION__DPO__EPOCHS": "8"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    line = next(x for x in out.splitlines() if x.startswith("new version"))
    reason = out.split(line, 1)[1].splitlines()[1]
    assert line.strip() == "new version    3: promoted to champion", out[-3000:]
    assert "better on held-out human data" in reason and "held-out preference accuracy" in reason
    assert str(registry.get_champion(settings).version) == "3"
    decision = registry.get_version(settings, "3").tags
    assert decision["labelloop.train_rule"] == "sft+dpo"

    # Turn 3, forced, feedback.train_rule warm: the champion (v3) continued on the human
    # responses plus a replay sample, not a retrain from the base model.
    r = cli(env, "feedback", "--reason", "test", extra={
        "LABELLOOP__FEEDBACK__FORCE_RETRAIN": "true", "LABELLOOP__FEEDBACK__TRAIN_RULE": "warm",
        "LABELLOOP__FEEDBACK__WARM_START__REPLAY_ROWS": "16"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "retrain: warm start from v3 on" in out and "training       warm start, SFT" in out
    v4 = registry.get_version(settings, "4")
    assert v4.tags["labelloop.train_rule"] in ("warm-sft", "warm-sft+dpo")
    params = mlflow.tracking.MlflowClient(settings.tracking_uri).get_run(v4.run_id).data.params
    assert params["warm_from"] == "3"
    # rows: 16 replayed + every trainable human response x new_label_repeats (4)
    assert int(params["train_rows"]) == 16 + 4 * int(params["human_responses"])
