"""User-facing errors.

Everything a user can get wrong (a missing file, a bad config value, a broken
checkpoint) raises a subclass of :class:`NMTError` with a message a person can
act on. The entry points print that message and exit with status 2 instead of
showing a traceback; anything else is a bug and keeps its traceback.
"""


class NMTError(Exception):
    """An error caused by the user's input, data or configuration."""


class DataError(NMTError):
    """A corpus file is missing, unreadable, misaligned or malformed."""


class TokenizerError(NMTError):
    """A SentencePiece model cannot be trained or does not fit our conventions."""


class ConfigError(NMTError):
    """A configuration value is invalid."""


class CheckpointError(NMTError):
    """A checkpoint is missing, unreadable or not one of ours."""
