"""What the serving settings turn into on the BentoML service class (read at import time):
metrics and tracing switches, connection recycling only with several workers, and the /classify
endpoint innermost (so recycling wraps it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, services.service as s
print(json.dumps({"config": {k: s.Labelloop.config.get(k) for k in ("metrics", "tracing")},
                  "middlewares": [[m.__name__, {k: v for k, v in o.items()
                                                if k not in ("get_handler", "check_body")}]
                                  for m, o in s.Labelloop.middlewares]},
                 default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else list(o)))
"""
HOT = ["HotRoute", {"path": "/classify", "max_body_bytes": 64 * 2**20}]
# The generation routes (services/generation_api.py) sit inside /classify's endpoint, so a
# /classify request never passes them.
GEN = [["HotRoute", {"path": p, "max_body_bytes": 64 * 2**20}]
       for p in ("/generate", "/v1/chat/completions", "/v1/completions")] + [
    ["HotRoute", {"path": "/v1/models", "method": "GET"}]]
# Host check and JSON-only bodies (services/guard.py): outside /classify, inside recycling.
GUARD = ["Guard", {"hosts": ["127.0.0.1", "::1", "localhost"],
                   "json_routes": ["/classify", "/classify_batch", "/ls/setup", "/ls/predict",
                                   "/ls/webhook", "/argilla/webhook", "/generate", "/v1/chat/completions",
                                   "/v1/completions"],
                   "read_routes": ["/classify_batch"], "max_body_bytes": 64 * 2**20}]


def _service_class(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_keep_metrics_drop_tracing_and_do_not_recycle_a_single_worker():
    got = _service_class()
    assert got["config"]["metrics"] == {"enabled": True}
    assert got["config"]["tracing"] == {"excluded_urls": [".*"]}  # every URL: no spans
    assert got["middlewares"] == [GUARD, HOT, *GEN]


def test_switches_and_recycling_with_several_workers():
    got = _service_class(LABELLOOP__SERVING__WORKERS="2", LABELLOOP__SERVING__METRICS="false",
                         LABELLOOP__SERVING__TRACING="true",
                         LABELLOOP__SERVING__MAX_CONNECTION_AGE_S="0.5",
                         LABELLOOP__SERVING__MAX_REQUESTS_PER_CONNECTION="7")
    assert got["config"]["metrics"] == {"enabled": False}
    assert not got["config"]["tracing"]  # BentoML's own tracing config applies
    # Starlette: the first middleware is the outermost, so recycling wraps /classify
    assert got["middlewares"] == [["RecycleConnections", {"max_requests": 7, "max_age_s": 0.5}],
                                  GUARD, HOT, *GEN]
    off = _service_class(LABELLOOP__SERVING__WORKERS="2",
                         LABELLOOP__SERVING__MAX_CONNECTION_AGE_S="0",
                         LABELLOOP__SERVING__MAX_REQUESTS_PER_CONNECTION="0")
    assert off["middlewares"] == [GUARD, HOT, *GEN]
