"""Exceptions raised by xbar: one base class, so callers can catch everything xbar raises."""

from __future__ import annotations


class XbarError(Exception):
    """Base class of every error xbar raises on purpose."""


class ConfigError(XbarError, ValueError):
    """A configuration value (TOML field, keyword argument, CLI option) is invalid.

    The message names the file (when there is one), the dotted field path and the valid range.
    """


class UsageError(ConfigError):
    """A command line that cannot be parsed (unknown option, missing value): one line, not argparse's
    usage dump."""


class ShapeError(XbarError, ValueError):
    """An array has the wrong shape, dtype or contents (NaN/inf)."""


class NonFiniteError(ShapeError):
    """An array holds NaN/inf or overflows float32 (e.g. a diverging training run)."""


class DataError(XbarError, FileNotFoundError):
    """A dataset could not be found or read; the message says where xbar looked."""
