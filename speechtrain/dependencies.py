"""Compiled dependencies that must match torch exactly, and the one sentence a user reads when they do not.

torchaudio ships a C++ extension built against one torch release: torchaudio 2.11.1 does not load against
torch 2.11.0 (`undefined symbol: torch_exception_get_what_without_backtrace`). Without this check the
failure surfaces through Hydra as "Error locating target ...", which hides the cause.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

from speechtrain.errors import DependencyError

# The pair pyproject.toml pins, and that the GPU image ships.
TORCH_VERSION = "2.11.0"
TORCHAUDIO_VERSION = "2.11.0"


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def import_torchaudio() -> ModuleType:
    """torchaudio, or a `DependencyError` naming the installed torch and torchaudio and the command that fixes them."""
    try:
        return importlib.import_module("torchaudio")
    except (ImportError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DependencyError(
            f"torchaudio {installed_version('torchaudio')} does not load with torch {installed_version('torch')} "
            f"({reason}); install the pair speechtrain is pinned to: "
            f"pip install torch=={TORCH_VERSION} torchaudio=={TORCHAUDIO_VERSION}"
        ) from exc
