"""Checkpoint files that are either the old version or the new one, never half of each.

Lightning's `TorchCheckpointIO` writes through fsspec, whose local transaction stages the file in the
system temp folder and moves it over: across file systems that move is a copy onto the target, and
nothing is fsynced, so a crash or a full disk during a save can leave a truncated `last.ckpt` that
`ckpt_path=last` then fails to load. `AtomicCheckpointIO` writes a hidden temporary file beside the
target, fsyncs it, renames it over the target (`os.replace`, atomic on POSIX) and fsyncs the folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` that leaves `path` untouched if it fails or the process dies midway.

    The temporary file (`.NAME.PID.tmp` in the same folder, so the rename never crosses file systems and
    `*.ckpt` globs never see it) is removed on an exception; a killed process leaves it behind, harmlessly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Makes the rename itself durable; some file systems refuse to open a folder, which is fine to skip."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with `atomic_torch_save` for local paths (remote URLs keep Lightning's fsspec path).

    Configured as a Trainer plugin (`speechtrain/conf/trainer/default.yaml`), so every checkpoint `ModelCheckpoint`
    writes, `last.ckpt` included (`save_last: true` writes a full copy, not a link), goes through it.
    """

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
