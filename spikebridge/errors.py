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
