"""speechtrain's own error types: what the user got wrong, as opposed to a bug.

`speechtrain-train` prints a `SpeechtrainError` as one paragraph that names the key, file or value and
what to do; anything else is a bug and shows its traceback. Each type also derives from the built-in
error it refines (`ValueError`, `FileNotFoundError`), so `except ValueError` around a call keeps working.
"""

from __future__ import annotations


class SpeechtrainError(Exception):
    """A mistake in what the user gave speechtrain: a config value, a data file, a path or a checkpoint."""


class ConfigError(SpeechtrainError, ValueError):
    """A config key or value that cannot work (wrong type, out of range, contradicting another key)."""


class DataError(SpeechtrainError, ValueError):
    """A corpus, manifest, audio file or token folder that is missing something or is malformed."""


class CheckpointError(SpeechtrainError, ValueError):
    """A checkpoint or model folder that cannot be loaded as asked (wrong family, missing keys, unsafe content)."""


class DependencyError(SpeechtrainError, ImportError):
    """An installed package that does not load (a compiled extension built for another torch, say)."""
