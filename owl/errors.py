"""The errors a user can fix, as one hierarchy.

Everything owl raises because of something the user gave it (a config value, a
data file, a model directory, a request) is an ``OwlError``: the CLI prints it
as one line ``owl: error: ...`` and exits with status 2. Any other exception is
a bug (or the machine running out of something) and keeps its traceback, exit
status 1. Each class also derives from the builtin that callers caught before
the hierarchy existed (``ValueError``, ``FileNotFoundError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations


class OwlError(Exception):
    """Base of every user-fixable error; the message names the value and the fix."""


class ConfigError(OwlError, ValueError):
    """A configuration value (recipe, preset, override, flag) is invalid."""


class ConfigNotFound(ConfigError, FileNotFoundError):
    """A config file (recipe, preset file) that was named does not exist."""


class DataError(OwlError, ValueError):
    """Training or evaluation data cannot be used as given (missing files, too many bad records)."""


class DataFileNotFound(DataError, FileNotFoundError):
    """A data file or folder named in a config does not exist."""


class CheckpointError(OwlError, ValueError):
    """A model directory or training checkpoint is missing, incomplete or does not match its config."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """A model directory, weights file or checkpoint that was asked for does not exist."""


class InputError(OwlError, ValueError):
    """Input given at run time (a prompt, an image, a generation setting) is invalid."""


class InputNotFound(InputError, FileNotFoundError):
    """A file named at run time (an image, a GGUF or vision weights file) does not exist."""
