"""benchmarks/box_wheels.py: the GPU box's wheels at the versions of configs/pip-constraints.txt."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "box_wheels", Path(__file__).resolve().parents[2] / "benchmarks" / "box_wheels.py")
box_wheels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(box_wheels)


def test_versions_come_from_the_constraints_file_whatever_the_spelling(tmp_path):
    constraints = tmp_path / "c.txt"
    constraints.write_text("# a comment==1\nannotated-types==0.8.0\nTyping_Extensions==4.16.0  \n"
                           "zope.interface==7.0\n")
    assert box_wheels.pinned(["annotated_types", "typing-extensions", "zope-interface"],
                             constraints) == ["annotated-types==0.8.0",
                                              "Typing_Extensions==4.16.0", "zope.interface==7.0"]


def test_a_name_the_constraints_do_not_pin_is_one_line_naming_it(tmp_path):
    constraints = tmp_path / "c.txt"
    constraints.write_text("pydantic==2.12.5\n# left-out==1.0\n")
    with pytest.raises(SystemExit, match=r"pins no version of left-out, nope$"):
        box_wheels.pinned(["pydantic", "left-out", "nope"], constraints)


def test_every_kit_name_is_pinned_in_the_real_constraints():
    """Both kits' lists resolve against the file `make setup` installs with."""
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import loop_turn
        import training_kit
    finally:
        sys.path.remove(str(bench))
    for names in (training_kit.WHEELS, loop_turn.KIT):
        reqs = box_wheels.pinned(names)
        assert len(reqs) == len(names) and all("==" in r for r in reqs)
    assert "annotated-types==0.8.0" in box_wheels.pinned(training_kit.WHEELS)


def test_download_asks_pip_for_cpython_312_manylinux_wheels_only(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(box_wheels.subprocess, "run",
                        lambda args, check: calls.append((args, check)))
    constraints = tmp_path / "c.txt"
    constraints.write_text("xxhash==4.1.0\n")
    monkeypatch.setattr(box_wheels, "CONSTRAINTS", constraints)
    assert box_wheels.download(["xxhash"], tmp_path / "whl") == ["xxhash==4.1.0"]
    (args, check), = calls
    assert check and (tmp_path / "whl").is_dir()
    assert args[args.index("--python-version") + 1] == "3.12"
    assert args[args.index("--implementation") + 1] == "cp"
    assert "--no-deps" in args and "--only-binary=:all:" in args
    assert "manylinux_2_17_x86_64" in args and "manylinux2014_x86_64" in args
    assert args[args.index("-d") + 1] == str(tmp_path / "whl") and args[-1] == "xxhash==4.1.0"
