"""The demo prints next commands that work for the user who ran `make demo`."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines import demo


def test_make_target_from_the_repo_else_the_venv_script(monkeypatch, tmp_path):
    script = Path(sys.executable).parent / "labelloop"
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)  # .venv/bin not on the PATH
    monkeypatch.chdir(demo.REPO_ROOT)
    hint = demo.command_hint("feedback --config x.yaml", "feedback")
    assert hint.startswith("make feedback   (= ") and hint.endswith(" feedback --config x.yaml)")
    assert "labelloop feedback" in hint and not hint.startswith("labelloop")
    monkeypatch.chdir(tmp_path)  # elsewhere: no Makefile target, the script by its path
    hint = demo.command_hint("feedback --config x.yaml", "feedback")
    assert Path(hint.split()[0]).resolve() == script.resolve()
    assert not hint.startswith(".."), hint  # outside the repo: its absolute path, not ../../
    # the venv is active (its labelloop is the one on the PATH): the plain command works
    monkeypatch.setattr(demo.shutil, "which", lambda name: str(script))
    assert demo.command_hint("demo --stop") == "labelloop demo --stop"


def test_demo_with_argilla_prints_its_url_and_login(monkeypatch, tmp_path, capsys):
    """`labelloop demo --tools argilla`: Argilla instead of Label Studio (servers, training and
    the service stubbed; the real ones are tests/integration/test_argilla.py)."""
    import yaml

    from annotation import argilla_server, studio
    from labelloop import registry

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    started = []
    monkeypatch.setattr(studio, "start", lambda *a, **k: started.append("label-studio"))
    monkeypatch.setattr(argilla_server, "start", lambda s, **k: started.append("argilla") or
                        argilla_server.ArgillaServer("http://127.0.0.1:6900", "key", "labelloop",
                                                     "pw-for-test", "labelloop", "d"))
    monkeypatch.setattr(registry, "get_champion", lambda s: type("C", (), {"version": "1"}))
    monkeypatch.setattr(demo, "start_service", lambda *a, **k: 1)
    monkeypatch.setattr(demo, "setup_argilla", lambda s: {
        "url": "http://127.0.0.1:6900/dataset/abc/annotation-mode"})
    assert demo.up(str(cfg), ["argilla"]) == 0
    out = capsys.readouterr().out
    assert started == ["argilla"]
    assert "Argilla        http://127.0.0.1:6900/dataset/abc/annotation-mode" in out
    assert "login        labelloop / pw-for-test" in out and "Label Studio" not in out
    written = yaml.safe_load((tmp_path / "data" / demo.SETTINGS_FILE).read_text())
    assert written["annotation"]["tools"] == ["argilla"]


def test_each_tools_start_up_lines_carry_its_own_name(capsys):
    from pipelines.demo import _tool_progress

    _tool_progress("argilla")("starting noida-db (search :9200, redis :6379)")
    _tool_progress("argilla")("waiting for /api/_status")
    _tool_progress("studio")("starting Label Studio")
    assert capsys.readouterr().err.splitlines() == [
        "[argilla] starting noida-db (search :9200, redis :6379)", "[studio] starting Label Studio"]
