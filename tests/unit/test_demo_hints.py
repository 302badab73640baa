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
    # the venv is active (its labelloop is the one on the PATH): the plain command works
    monkeypatch.setattr(demo.shutil, "which", lambda name: str(script))
    assert demo.command_hint("demo --stop") == "labelloop demo --stop"
