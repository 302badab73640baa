"""`labelloop serve`: start the BentoML service (same as `bentoml serve` in the repo root)."""

from __future__ import annotations

import labelloop  # noqa: F401  (telemetry off before anything else is imported)

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from labelloop.registry import RegistryError, get_champion
from labelloop.settings import CONFIG_ENV, load_settings

SERVICE = "services.service:Labelloop"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def serve(config_path: Optional[str] = None, port: Optional[int] = None) -> int:
    """Check there is a champion, then run `bentoml serve` in the foreground; returns its code."""
    settings = load_settings(config_path)
    if get_champion(settings) is None:
        from services.runtime import no_champion_message

        raise RegistryError(no_champion_message(settings))
    env = dict(os.environ)
    if config_path:
        env[CONFIG_ENV] = str(Path(config_path).resolve())
    # Relative paths in the settings (data_dir) keep meaning what they meant for the caller.
    env.setdefault("LABELLOOP__DATA_DIR", str(settings.data_path))
    cmd = [
        sys.executable, "-m", "bentoml", "serve", SERVICE,
        "--host", settings.serving.host,
        "--port", str(port or settings.serving.port),
    ]
    print(f"labelloop serve: http://{settings.serving.host}:{port or settings.serving.port} "
          f"(classify: POST /classify, Label Studio backend: /ls)", flush=True)
    try:
        return subprocess.call(cmd, cwd=str(PROJECT_ROOT), env=env)
    except KeyboardInterrupt:
        return 130
