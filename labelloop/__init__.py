"""labelloop: human-in-the-loop NLP (fine-tune, serve, annotate, retrain).

Importing the package switches off the telemetry of every library the project uses and keeps
Hugging Face offline, so nothing phones home, and turns the libraries' chatter down (the env
switches below, then labelloop/quiet.py) so progress and results stand out. `os.environ.setdefault`
lets a user who really wants a switch on say so explicitly in the environment.
"""

import os

OFFLINE_ENV = {
    "ZENML_ANALYTICS_OPT_IN": "false",
    "ZENML_DEBUG": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Label Studio (started by `labelloop studio up`) reads these.
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    # Chatter: MLflow's INFO lines ("Creating initial MLflow database tables...") and its
    # "Downloading artifacts" bars, and the Hugging Face progress bars for loading and writing
    # weights (labelloop's own bars stay).
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

from labelloop import quiet as _quiet  # noqa: E402  (after the env: it reads none of it)

_quiet.install()

__version__ = "0.1.0"
