"""User-facing errors.

Anything the user can fix (a config value, a missing model, a bad data row) is raised as a
``UserError`` whose message is one sentence naming *what* is wrong and *where*. ``alignbench.cli``
prints it on one line and exits non-zero without a traceback (set ``HYDRA_FULL_ERROR=1`` to see it).
"""


class UserError(Exception):
    """A mistake in the user's config, data or environment; the message is shown as-is."""


class ConfigError(UserError):
    """A config value is missing, of the wrong type or out of range."""


class ModelUnavailableError(UserError):
    """A model is not on this machine and cannot be fetched (offline)."""


class DataError(UserError):
    """A data file or row is malformed; the message names file, line and field."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated or corrupted; the message names the file."""


class NumericalFaultError(RuntimeError):
    """Too many NaN/inf steps in a row; the run keeps its last good checkpoint."""
