"""What every step shares: settings from the pipeline's `config` path and `overrides`."""

from __future__ import annotations

from typing import Any, Optional

import labelloop  # noqa: F401
from labelloop.settings import Settings, load_settings


def settings_for(config: Optional[str], overrides: Optional[dict[str, Any]]) -> Settings:
    return load_settings(config, overrides=overrides)
