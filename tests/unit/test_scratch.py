"""Scratch directories: a killed process's leftovers are removed by the next one, a live
process's are not (regression: a killed training run left its model directory for ever)."""

import os
import subprocess
import sys

from labelloop import scratch
from labelloop.settings import Settings


def test_dead_owners_leftovers_go_live_ones_stay(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = tmp_path / "tmp"
        root.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        (root / f"bundle-{dead}-abc").mkdir()
        (root / f"bundle-{dead}-abc" / "model.safetensors").write_bytes(b"x" * 10)
        (root / f"challenger-{child.pid}-def").mkdir()
        (root / "unrelated").mkdir()
        mine = scratch.make(settings, "bundle")
        assert mine.name.startswith(f"bundle-{os.getpid()}-") and mine.is_dir()
        assert not (root / f"bundle-{dead}-abc").exists()
        assert (root / f"challenger-{child.pid}-def").is_dir() and (root / "unrelated").is_dir()
    finally:
        child.kill()
        child.wait()
    assert scratch.clean_stale(settings) == [root / f"challenger-{child.pid}-def"]
