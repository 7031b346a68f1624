"""User-facing errors: one clear sentence, shown by the CLI without a traceback (exit code 2)."""

from __future__ import annotations


class SpikebridgeError(Exception):
    """Base of every error caused by bad input (data, config, checkpoint, mapping)."""


class DataError(SpikebridgeError):
    """A dataset file is missing, truncated or malformed."""


class ConfigError(SpikebridgeError):
    """A configuration key or value is invalid."""


class ModelError(SpikebridgeError):
    """A model cannot be built, loaded, mapped or converted as asked."""


class RunError(ModelError):
    """A run folder is missing, incomplete (no ``summary.json``), damaged or in use.

    A subclass of :class:`ModelError`, which run-folder problems raised before it existed.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI in its main thread so that a run stops as after Ctrl-C: what
    it had not committed is removed, what it committed can be resumed (exit code 143)."""


RESUME_ATTRIBUTE = "spikebridge_resume_dir"


def mark_resumable(exc: BaseException, run_dir: object) -> None:
    """Note on an interruption that ``run_dir`` holds a committed, resumable run."""
    setattr(exc, RESUME_ATTRIBUTE, str(run_dir))


def resumable_run(exc: BaseException) -> str | None:
    """The run folder :func:`mark_resumable` noted on ``exc`` (None: nothing to resume)."""
    return getattr(exc, RESUME_ATTRIBUTE, None)
