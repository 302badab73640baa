"""annotation/argilla_server.py without starting anything: a port someone else holds is one
clear error before any process starts; a missing API key says how to get one."""

from __future__ import annotations

import socket

import pytest

from annotation import argilla_server as S
from labelloop.settings import Settings
from tests.helpers import free_port


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        s = Settings(data_dir=str(tmp_path), argilla={
            "port": free_port(), "search_port": port, "redis_port": free_port(),
            "venv": str(tmp_path / "no-venv")})
        with pytest.raises(S.ArgillaServerError, match=r"argilla\.search_port"):
            S.start(s, progress=lambda m: None)
    assert not (tmp_path / "no-venv").exists()  # nothing installed
    assert not list(tmp_path.glob("argilla/*.pid"))
    assert S.status(s)["ready"] is False and S.status(s)["server_pid"] is None


def test_api_key_from_settings_or_generated_once(tmp_path):
    s = Settings(data_dir=str(tmp_path))
    with pytest.raises(S.ArgillaServerError, match="labelloop argilla up"):
        S.api_key(s)
    key = S.api_key(s, create=True)
    assert S.api_key(s) == key and (S.paths(s).key_file.stat().st_mode & 0o777) == 0o600
    assert S.api_key(Settings(data_dir=str(tmp_path), argilla={"api_key": "k" * 12})) == "k" * 12
