"""User-facing error types: the CLI prints these as one line; anything else is a bug (traceback)."""

from labelloop.modeling import ModelError
from labelloop.registry import RegistryError
from labelloop.settings import ConfigError
from labelloop.sources import DataError
from labelloop.tasks import LabelError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, ModelError, RegistryError, LabelError,
)
