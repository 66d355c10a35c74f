"""Errors in what the user gave us (files, configs, checkpoints, data).

Entry points catch :class:`AdaptError`, print its one-line message and exit non-zero; anything else is a
bug and keeps its traceback.
"""


class AdaptError(ValueError):
    """Bad input: the message names the file or key and what was expected."""


class CheckpointError(AdaptError):
    """A checkpoint that cannot be read, or does not match the model."""


class ConfigError(AdaptError):
    """An unknown, misspelt or invalid config key."""


class DataError(AdaptError):
    """A malformed or inconsistent data file."""


class TrainingError(AdaptError):
    """A run that cannot go on (a non-finite loss): the message names the step and the last good checkpoint."""
