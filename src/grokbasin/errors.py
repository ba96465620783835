"""Errors a user can act on: the CLI prints them as one line and exits non-zero."""


class GrokbasinError(Exception):
    """Base class for problems with the user's input or files (never a bug in grokbasin)."""


class ConfigError(GrokbasinError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class CorruptFileError(GrokbasinError):
    """A run file (checkpoint, metrics, state) is unreadable or inconsistent."""
