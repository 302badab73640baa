"""Shared fixtures. `label_studio`: ONE real Label Studio server for the whole test session.

Started through annotation.studio (its own virtualenv, installed on first use: about 2 minutes
once per machine; set LABELLOOP_TEST_LS_VENV to reuse an existing Label Studio venv), on a free
port with a data dir under pytest's session temp dir, stopped at the end of the session.

Tests that need it build their own Settings from `label_studio.studio_overrides()`, e.g.
    Settings(data_dir=str(tmp_path), **label_studio.studio_overrides())
and should use a project title of their own (projects are shared by the session's server).
"""

from __future__ import annotations

import os

import pytest

import labelloop  # noqa: F401  (offline switches before anything else)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    from annotation import studio
    from labelloop.settings import Settings
    from tests.helpers import free_port

    data_dir = tmp_path_factory.mktemp("label-studio-server")
    studio_cfg = {"port": free_port()}
    if os.environ.get("LABELLOOP_TEST_LS_VENV"):
        studio_cfg["venv"] = os.environ["LABELLOOP_TEST_LS_VENV"]
    settings = Settings(data_dir=str(data_dir), studio=studio_cfg)
    server = studio.start(settings, timeout=900)
    try:
        yield server
    finally:
        studio.stop(settings)


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory):
    """ONE real Argilla server (argilla-server 2.8 + noida-db, own venv installed on first use:
    about a minute once per machine; about 30 s to start) for the whole test session, on free
    ports, data under pytest's session temp dir, stopped (every process) at the end.
    Tests build Settings from `argilla_server.argilla_overrides()` and use a dataset name of
    their own (datasets are shared by the session's server)."""
    from annotation import argilla_server
    from labelloop.settings import Settings
    from tests.helpers import free_port

    data_dir = tmp_path_factory.mktemp("argilla-server")
    settings = Settings(data_dir=str(data_dir), argilla={
        "port": free_port(), "search_port": free_port(), "redis_port": free_port()})
    server = argilla_server.start(settings, timeout=300)
    try:
        yield server
    finally:
        argilla_server.stop(settings)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A one-layer random BERT with MiniLM's tokenizer: fine_tune runs in a second on a CPU."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from labelloop.modeling import resolve_base_model
    from labelloop.settings import Settings

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(Settings().model.base))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def one_thread():
    """On a busy 2-core box, two torch threads cost a tiny model 15x more per step than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
