"""Test helpers shared by unit and integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from labelloop import modeling
from labelloop.settings import Settings
from labelloop.tasks import task_from_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, its workers included."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def register_untrained_version(settings: Settings, seed: int = 0, champion: bool = True) -> str:
    """Register the base MiniLM with a seeded random head as a ready version (no training).

    Fast (a few seconds), real registry entries: enough for serving and annotation tests that
    need *a* model and can tell versions apart by their outputs.
    """
    import mlflow  # here, not at the top: the serving benchmark imports this module on
    from labelloop import registry  # machines that have no MLflow (--bundle runs)

    task = task_from_settings(settings)
    base = modeling.resolve_base_model(settings.model.base)
    torch.manual_seed(seed)
    model = modeling.load_base_classifier(base, task)
    tokenizer = modeling.load_tokenizer(base)
    with tempfile.TemporaryDirectory() as tmp:
        modeling.save_bundle(model, tokenizer, Path(tmp) / "bundle", {
            "task": task.to_dict(), "max_length": settings.model.max_length,
            "base_model": settings.model.base, "dataset_digest": f"untrained-seed-{seed}",
            "method": "none",
        })
        experiment_id = registry.ensure_experiment(settings)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"untrained-{seed}") as run:
            mlflow.log_artifacts(str(Path(tmp) / "bundle"), registry.BUNDLE_ARTIFACT_PATH)
    mv = registry.register_bundle(settings, run.info.run_id)
    if champion:
        registry.set_champion(settings, mv.version)
    return str(mv.version)


def sample_corpus(root: Path, rows: int, seed: int):
    """`rows` tweets of the default corpus written to `root/small.csv` (utf-8); returns the
    full corpus frame."""
    import pandas as pd

    from labelloop.settings import load_settings, resolve_path

    corpus = pd.read_csv(resolve_path(load_settings(environ={}).dataset.path), encoding="latin-1")
    corpus.sample(rows, random_state=seed)[["sentiment", "text"]].to_csv(root / "small.csv",
                                                                         index=False)
    return corpus


@contextmanager
def demo_service(root: Path, config: dict,
                 champion: Callable[[Settings], str]) -> Iterator[tuple[Path, Settings, str]]:
    """The labelloop service as a real process (`bentoml serve`, started by pipelines.demo) on
    `config` (written to root/config.yaml; its data_dir the service's), while it runs with no
    LABELLOOP_* variable of the caller's and a private ZenML store under `root`.
    `champion(settings)` registers what it serves. Yields (settings file, settings, champion
    version); stops the service and restores the environment afterwards."""
    import yaml

    from labelloop.settings import load_settings
    from pipelines import demo

    (root / "config.yaml").write_text(yaml.safe_dump(config))
    saved = dict(os.environ)
    for k in [k for k in os.environ if k.startswith("LABELLOOP")]:
        del os.environ[k]
    os.environ["ZENML_CONFIG_PATH"] = str(root / "zenml")
    try:
        settings_file, settings = demo.write_demo_settings(str(root / "config.yaml"))
        version = champion(settings)
        demo.start_service(settings_file, settings, timeout=300)
        yield settings_file, settings, version
    finally:
        try:
            written = Path(config["data_dir"]) / demo.SETTINGS_FILE
            if written.is_file():
                demo.stop_service(load_settings(str(written)))
        finally:
            os.environ.clear()
            os.environ.update(saved)


def small_corpus_env(root: Path, rows: int, seed: int, **settings_env: str) -> tuple[dict, object]:
    """A workspace for pipeline tests: `rows` tweets of the default corpus in `root/small.csv`,
    a private ZenML store and data dir, tiny training, plus any LABELLOOP__ overrides given.
    Returns (environment for subprocesses, the full corpus frame)."""
    corpus = sample_corpus(root, rows, seed)
    env = {
        **os.environ,
        "ZENML_CONFIG_PATH": str(root / "zenml"),
        "LABELLOOP__DATA_DIR": str(root / "data"),
        "LABELLOOP__DATASET__PATH": str(root / "small.csv"),
        "LABELLOOP__DATASET__ENCODING": "utf-8",
        "LABELLOOP__TRAINING__BATCH_SIZE": "16",
        "LABELLOOP__TRAINING__MIN_STEPS": "0",  # tiny training: no small-data floor of steps
        "LABELLOOP__MODEL__MAX_LENGTH": "32",
        "PYTHONUNBUFFERED": "1",
        **settings_env,
    }
    return env, corpus


CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_causal_lm(out_dir: Path, seed: int = 0, layers: int = 2, hidden: int = 64,
                   texts: list[str] | None = None) -> Path:
    """A few-layer random Llama with a small byte-level BPE tokenizer (ChatML chat template),
    saved as a Hugging Face directory: a real causal LM that trains and generates in seconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = texts or ["hello how are you", "I am fine thank you", "what is your name",
                       "my name is bot", "tell me a joke", "system user assistant"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


def tiny_generation_bundle(out_dir: Path, seed: int = 0, **meta) -> Path:
    """`tiny_causal_lm` plus labelloop.json: a generation bundle for serving tests."""
    import json

    tiny_causal_lm(out_dir, seed=seed)
    (Path(out_dir) / modeling.BUNDLE_META).write_text(json.dumps({
        "task": {"type": "generation", "name": "chat"}, "base_model": "tiny-random-llama",
        "init": "scratch", "method": "none", "max_length": 256, "max_prompt_tokens": 128,
        "max_new_tokens": 32, "system_prompt": None, "dataset_digest": f"untrained-seed-{seed}",
        **meta}, indent=2))
    return Path(out_dir)


@contextmanager
def mlflow_server(root: Path, timeout: float = 120.0) -> Iterator[str]:
    """A real `mlflow server` on a free 127.0.0.1 port (SQLite + artifacts under `root`, proxied
    artifacts); yields its URL, stops it (workers included) on exit."""
    import sys
    import time

    import httpx

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mlflow server did not come up")
            time.sleep(0.5)
        yield uri
    finally:
        stop_process_group(proc)


def retry_ui(action: Callable[[], None], attempts: int = 3) -> None:
    """Run a browser step again when Label Studio's labeling panel renders anew under it.

    The panel renders a second time once the data manager's tab has loaded; under load (the CI
    suite) that lands in the middle of a step: an edit opened in the first render is gone, its
    Save button detached, and a click waits for a minute on a stale element. Each attempt of
    `action` should wait briefly (timeouts of seconds, not a minute) and redo the whole step."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        try:
            action()
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
