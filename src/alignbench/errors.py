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


class OracleLeakError(RuntimeError):
    """A training step consulted the evaluation oracle under ``signals=learned`` (``utils.oracle``)."""


class StorageError(UserError):
    """A file could not be written (read-only directory, full disk, quota); the message names the path."""


class RunDirError(UserError):
    """The run directory belongs to another job; the job stops without writing anything into it."""


class RunDirBusyError(RunDirError):
    """Another live alignbench process holds the run directory's lock; the message names its pid."""


class NumericalFaultError(RuntimeError):
    """Too many NaN/inf steps in a row; the run keeps its last good checkpoint."""


#: exit status of a preempted run (sysexits.h EX_TEMPFAIL: "temporary failure, retry"): a checkpoint was
#: written and the same command (``resume=auto``, the default) continues it. Distinct from a crash (1), a
#: user error (2) and a process killed by a signal without saving (128 + signal number, e.g. 137, 143).
EXIT_PREEMPTED = 75
#: exit status of a run stopped by Ctrl-C (SIGINT), the shell's 128 + 2
EXIT_INTERRUPTED = 130


class Preempted(Exception):
    """SIGTERM/SIGUSR1/SIGUSR2 arrived: the run saved a checkpoint (when it was training) and stops cleanly.

    ``status`` and ``exit_code`` are what ``summary.json`` and the process report."""

    status = "preempted"
    exit_code = EXIT_PREEMPTED

    def __init__(self, message: str, *, signal_name: str = "SIGTERM", checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class Interrupted(Preempted):
    """Ctrl-C (SIGINT): the same clean stop as a preemption, reported as ``interrupted``, exit 130."""

    status = "interrupted"
    exit_code = EXIT_INTERRUPTED
