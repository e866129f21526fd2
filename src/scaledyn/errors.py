"""Errors that stop a command with a one-line message naming the key, file or row at fault.

Kept free of heavy imports so the CLI can catch them without loading torch or scipy.
"""


class ScaledynError(ValueError):
    """Base: the CLI prints the message and exits with `exit_code`, without a traceback."""

    exit_code = 1


class ConfigError(ScaledynError):
    """A study configuration that cannot run; the message starts with the offending key path."""


class DataError(ScaledynError):
    """Bad corpus input; the message names the file or config key."""


class CheckpointError(ScaledynError):
    """A checkpoint that is missing, partial or corrupt; the message names its directory."""


class CurveError(ScaledynError):
    """A loss curve that cannot be fitted; the message names the problem and the row."""


class SchemaMismatch(ScaledynError):
    """Rows whose schema differs from the dataset they would join."""


class RunLocked(ScaledynError):
    """Another process is training the same run."""


class Diverged(ScaledynError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept."""

    exit_code = 65  # EX_DATAERR: distinct from 75 (pre-empted, retry) and 1 (any other error)


class Preempted(ScaledynError):
    """Training was asked to stop (SIGTERM / SIGUSR1, a SLURM pre-emption) and saved a checkpoint to
    resume from; the job should be retried."""

    exit_code = 75  # EX_TEMPFAIL: the profile's retries resume the run


class WriteError(ScaledynError):
    """An output that cannot be written (full disk, read-only or missing directory)."""


class SuiteError(ScaledynError):
    """A published checkpoint suite that cannot be used: a missing revision, or another tokenizer."""
