"""The ZenML stack labelloop runs on: the local default stack plus an MLflow experiment tracker
pointing at the project's tracking URI. `ensure_stack` is idempotent and is called by every CLI
entry point; run `python -m pipelines.stack` once before using `zenml pipeline run` directly.
"""

from __future__ import annotations

import sys

import labelloop  # noqa: F401  (telemetry off before zenml is imported)
from labelloop import registry
from labelloop.settings import Settings, load_settings

TRACKER_NAME = "labelloop_mlflow"
STACK_NAME = "labelloop"


def ensure_stack(settings: Settings) -> str:
    """Register (or repoint) the MLflow tracker and the `labelloop` stack, and activate it."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    registry.ensure_experiment(settings)  # artifacts go under the data dir, not ./mlruns
    client = Client()
    uri = settings.tracking_uri
    try:
        tracker = client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, TRACKER_NAME)
        if tracker.configuration.get("tracking_uri") != uri:
            client.update_stack_component(
                TRACKER_NAME, StackComponentType.EXPERIMENT_TRACKER,
                configuration={"tracking_uri": uri},
            )
    except KeyError:
        client.create_stack_component(
            name=TRACKER_NAME, flavor="mlflow",
            component_type=StackComponentType.EXPERIMENT_TRACKER,
            configuration={"tracking_uri": uri},
        )
    try:
        client.get_stack(STACK_NAME)
    except KeyError:
        default = client.get_stack("default")
        client.create_stack(
            name=STACK_NAME,
            components={
                StackComponentType.ORCHESTRATOR: default.components[StackComponentType.ORCHESTRATOR][0].id,
                StackComponentType.ARTIFACT_STORE: default.components[StackComponentType.ARTIFACT_STORE][0].id,
                StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
            },
        )
    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
    return STACK_NAME


if __name__ == "__main__":
    config = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"active ZenML stack: {ensure_stack(load_settings(config))}")
