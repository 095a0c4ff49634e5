"""Checkpoint files that are either the old version or the new one, never half of each.

Lightning's `TorchCheckpointIO` writes through fsspec, whose local transaction stages the file in the
system temp folder and moves it over: across file systems that move is a copy onto the target, and
nothing is fsynced, so a crash or a full disk during a save can leave a truncated `last.ckpt` that
`ckpt_path=last` then fails to load. `AtomicCheckpointIO` writes through `speechtrain.atomic.atomic_write`:
a hidden temporary file beside the target, fsynced, renamed over the target and the folder fsynced.

Loading (resume) is `weights_only` with speechtrain's allowlist (speechtrain/safe_load.py) unless the run says
`trust_checkpoint=true`: a checkpoint handed to `ckpt_path` may come from anywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from speechtrain.atomic import atomic_write
from speechtrain.safe_load import checkpoint_unpickling

log = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` that leaves `path` untouched if it fails or the process dies midway
    (`speechtrain.atomic.atomic_write`)."""
    atomic_write(path, lambda file: torch.save(obj, file))


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with `atomic_torch_save` for local paths (remote URLs keep Lightning's fsspec path).

    Configured as a Trainer plugin (`speechtrain/conf/trainer/default.yaml`), so every checkpoint `ModelCheckpoint`
    writes, `last.ckpt` included (`save_last: true` writes a full copy, not a link), goes through it, and so does
    every checkpoint Lightning reads back (`ckpt_path` of fit, validate, test): with `weights_only=True` and
    speechtrain's allowlist unless `trust_checkpoint` (the run's `trust_checkpoint` key).
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO.save_checkpoint got storage_options={storage_options!r}, which it does not use; "
                "drop them or use a custom CheckpointIO"
            )
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)
            return
        log.debug("saving checkpoint %s atomically", path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: _PATH, map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Lightning's load, refusing content that could run code (a `CheckpointError` naming type and file) unless
        `trust_checkpoint`; the `weights_only` Lightning passes (None unless `trainer.fit(weights_only=...)`) is
        overridden by that setting."""
        if self.trust_checkpoint:
            return super().load_checkpoint(path, map_location, weights_only=False)
        with checkpoint_unpickling(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
