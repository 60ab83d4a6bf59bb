"""The avda error hierarchy.

Every error avda raises on bad input is an :class:`AvdaError` whose message says what is wrong,
where (file, row, key) and how to fix it. The CLI prints that one line and exits with code 1;
``AVDA_DEBUG=1`` shows the traceback. Subclasses also derive from the matching built-in error,
so library users can catch ``FileNotFoundError`` or ``ValueError`` as usual.
"""

from __future__ import annotations


class AvdaError(Exception):
    """Base class of every error avda raises on purpose."""


class ConfigError(AvdaError, ValueError):
    """A configuration value, keyword or name is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup for a name that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain sentence.
        return str(self.args[0]) if self.args else ""


class ManifestError(AvdaError, ValueError):
    """A manifest file is missing, unreadable or invalid."""


class MediaError(AvdaError, OSError):
    """A video, audio or frame file cannot be read or decoded."""


class CheckpointError(AvdaError, ValueError):
    """A weights file does not match the layout the model expects."""


class MissingDependencyError(AvdaError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra."""


class CacheError(AvdaError, ValueError):
    """A feature cache is missing, of an unknown schema version, or does not match the request."""


class RunError(AvdaError, ValueError):
    """A run directory is missing, incomplete or inconsistent."""


class LockWaitError(AvdaError):
    """Another process held a lock file longer than ``$AVDA_LOCK_WAIT`` allows (not an OSError:
    the lock's own errors are)."""


class TrainingDiverged(AvdaError, FloatingPointError):
    """A loss became NaN or infinite."""
