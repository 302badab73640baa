"""Wheels for a bare GPU box (CPython 3.12, manylinux x86_64) at this project's pinned versions.

The versions come from one place, configs/pip-constraints.txt (what `make setup` installs here),
so a kit carries what this machine's tests ran with. benchmarks/training_kit.py and
benchmarks/loop_turn.py, generation.py and generation_loop.py (--build-kit) all download
through `download`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

CONSTRAINTS = Path(__file__).resolve().parents[1] / "configs" / "pip-constraints.txt"
BOX_PYTHON = "3.12"  # the device machine's Python
# Newest first: pip takes a wheel built for any of them (older glibc tags run on newer glibc).
PLATFORMS = [*(f"manylinux_2_{n}_x86_64" for n in (28, 27, 24, 17)), "manylinux2014_x86_64"]


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): `typing_extensions` = `Typing-Extensions`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(names: list[str], constraints: Optional[Path] = None) -> list[str]:
    """`name==version` for each of `names`, the version the constraints file (default
    CONSTRAINTS) pins; one line naming every name it does not pin."""
    constraints = constraints or CONSTRAINTS
    pins = {}
    for line in constraints.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[normalized(name)] = f"{name}=={version.split()[0]}"
    missing = [n for n in names if normalized(n) not in pins]
    if missing:
        raise SystemExit(f"{constraints} pins no version of {', '.join(missing)}")
    return [pins[normalized(n)] for n in names]


def download(names: list[str], into: Path) -> list[str]:
    """Download the pinned wheels of `names` (no dependencies: the caller names them all) into
    `into`; returns the requirements downloaded."""
    reqs = pinned(names)
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", BOX_PYTHON, "--implementation", "cp",
                    *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(into), *reqs],
                   check=True)
    return reqs
