"""speechtrain: train, fine-tune, evaluate and export speech models with PyTorch Lightning and Hydra.

In a notebook or script::

    import speechtrain
    cfg = speechtrain.compose("whisper_mini", "trainer.max_epochs=2")
    metrics = speechtrain.fit(cfg)

`compose` and `fit` load Lightning and Hydra on first use, so `import speechtrain.models...` stays light.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("speechtrain")
except metadata.PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "compose", "fit"]


def __getattr__(name: str) -> Any:
    if name == "compose":
        from speechtrain.train import compose

        return compose
    if name == "fit":
        from speechtrain.train import train

        return train
    raise AttributeError(f"module 'speechtrain' has no attribute {name!r}")
