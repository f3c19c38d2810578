"""Errors a user can fix; the entry points print their message without a traceback."""


class SweepError(Exception):
    """Base class: something about the input that the user can fix, explained in the message."""


class ConfigError(SweepError, ValueError):
    """A setting is invalid; raised before any expensive work starts."""
