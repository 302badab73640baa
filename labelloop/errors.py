"""User-facing error types: the CLI prints these as one line; anything else is a bug (traceback)."""

from labelloop.settings import ConfigError
from labelloop.sources import DataError
from labelloop.tasks import LabelError


# Defined here, not beside torch and MLflow in modeling / registry (which re-export them): the
# CLI names these when a command fails, and loading torch, transformers and MLflow for that
# took 3.6 s of a bad-config error's 5.
class ModelError(ValueError):
    """A model path or bundle that cannot be used."""


class RegistryError(RuntimeError):
    """A registry state that does not allow the operation (e.g. a version not ready)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, ModelError, RegistryError, LabelError,
)
