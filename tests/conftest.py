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
