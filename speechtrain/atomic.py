"""Files that are either the old version or the new one, never half of each.

`atomic_write` writes a hidden temporary file beside the target (`.NAME.PID.tmp` in the same folder, so the
rename never crosses file systems and globs such as `*.ckpt` never see it), fsyncs it, renames it over the
target (`os.replace`, atomic on POSIX) and fsyncs the folder so that the rename itself survives a crash.
Checkpoints (`speechtrain.checkpoint_io`) and token shards (`speechtrain.data.token_shards`) are written so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls `write(file)` on a temporary file and puts it at `path` only once it is complete and on disk.

    `path` is left untouched if `write` fails or the process dies midway; the temporary file is removed on an
    exception, and a killed process leaves it behind, harmlessly. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`atomic_write` of bytes already in memory."""
    atomic_write(path, lambda file: file.write(data))


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
