"""annotation.studio without starting a server: token, paths, env, refusal of a busy port."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from annotation import studio
from labelloop.cli import build_parser
from labelloop import trigger
from labelloop.settings import Settings


def test_generated_token_is_private_and_stable(tmp_path):
    s = Settings(data_dir=str(tmp_path))
    with pytest.raises(studio.StudioError, match="no Label Studio API token"):
        studio.api_token(s)
    token = studio.api_token(s, create=True)
    assert len(token) == 40
    mode = stat.S_IMODE(os.stat(studio.paths(s).token_file).st_mode)
    assert mode == 0o600
    assert studio.api_token(s) == token
    assert studio.api_token(Settings(data_dir=str(tmp_path), studio={"api_token": "x" * 40})) == "x" * 40


def test_paths_and_env(tmp_path):
    s = Settings(data_dir=str(tmp_path), studio={"venv": str(tmp_path / "v"), "port": 9999})
    p = studio.paths(s)
    assert p.data_dir == tmp_path.resolve() / "label-studio"
    assert p.executable == (tmp_path / "v").resolve() / "bin" / "label-studio"
    env = studio.studio_env(s, "t" * 40)
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_USER_TOKEN"] == "t" * 40
    assert env["SENTRY_DSN"] == "" and env["COLLECT_ANALYTICS"] == "false"
    assert "VIRTUAL_ENV" not in env
    assert studio.url(s) == "http://127.0.0.1:9999"
    assert studio.status(s)["running"] is False


def test_busy_port_is_refused_before_installing(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        s = Settings(data_dir=str(tmp_path), studio={"port": port, "venv": str(tmp_path / "none")})
        with pytest.raises(studio.StudioError, match="in use"):
            studio.start(s, progress=lambda m: None)
    assert not (tmp_path / "none").exists()


def test_stop_when_not_running(tmp_path):
    assert studio.stop(Settings(data_dir=str(tmp_path)), progress=lambda m: None) is False


def test_feedback_command_parses(tmp_path):
    cmd = trigger.feedback_command(tmp_path / "s.yaml", 5, "label-studio: start training")
    assert cmd[1:3] == ["-m", "labelloop.cli"]
    args = build_parser().parse_args(cmd[3:])
    assert (args.command, args.project, args.reason, args.config) == (
        "feedback", 5, "label-studio: start training", str(tmp_path / "s.yaml"))


def test_stale_pid_file_of_another_process_is_ignored(tmp_path):
    s = Settings(data_dir=str(tmp_path))
    p = studio.paths(s)
    p.data_dir.mkdir(parents=True)
    p.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not Label Studio
    assert studio.status(s)["running"] is False
    assert studio.stop(s, progress=lambda m: None) is False
