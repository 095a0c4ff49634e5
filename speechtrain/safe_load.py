"""Loading pickled torch files without running the code a file may carry.

`torch.load(weights_only=False)` unpickles anything, and a pickle can call any function while it is read:
a `D_*.pth` or a `.ckpt` from the internet could write files or start processes. Every load of a file
speechtrain did not write itself goes through `load_untrusted` (tensors, numbers, strings and containers,
torch's `weights_only` set), and every load of a speechtrain Lightning checkpoint (export, resume) through
`load_checkpoint` or `checkpoint_unpickling`: `weights_only` plus `CHECKPOINT_SAFE_GLOBALS`. Anything
else is refused with a `CheckpointError` that names the type and the file; `trust=True`
(`speechtrain-export --trust-checkpoint`, `trust_checkpoint=true` for resuming) is for a file whose origin
the user knows.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from speechtrain.errors import CheckpointError

# Types beyond torch's `weights_only` defaults (tensors, dtypes, numbers, strings, bytes, lists, tuples, dicts,
# OrderedDict, sets) that speechtrain's Lightning checkpoints hold. A checkpoint of every bundled recipe (weights,
# optimiser and scheduler states, callback and loop states, the data loader's generator states, config and
# tokenizer files as bytes) needs none: tests/test_safe_load.py saves one of each and keeps this list complete.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()

TRUST_HINT = ("If you know where the file comes from, `speechtrain-export --trust-checkpoint` or "
              "`trust_checkpoint=true` (to resume) loads it with full unpickling, which runs any code it carries.")
_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_WEIGHTS_ONLY_ERROR = re.compile(r"WeightsUnpickler error: ([^\n]*)")


def _refused_content(error: pickle.UnpicklingError) -> str | None:
    """What the `weights_only` unpickler refused (`io.open`, `fractions.Fraction`, ...), or None when `error`
    is not such a refusal (a truncated or foreign file)."""
    message = str(error)
    if "Weights only load failed" not in message:
        return None
    found = _UNSUPPORTED_GLOBAL.search(message) or _WEIGHTS_ONLY_ERROR.search(message)
    return found.group(1).strip() if found else "content outside the allowed types"


@contextmanager
def _refusing(path: str | os.PathLike, what: str, allowed: Sequence[Any], hint: str) -> Iterator[None]:
    """Runs a `weights_only` torch.load with `allowed` added; turns its failures into `CheckpointError`s."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    except pickle.UnpicklingError as error:
        refused = _refused_content(error)
        if refused is None:
            raise CheckpointError(f"{path}: cannot read this {what} ({error}); the file may be truncated") from None
        raise CheckpointError(
            f"{path}: refusing to load this {what}: it holds {refused}, which is not among the types a {what} "
            f"holds, and unpickling it could run code the file carries. {hint}"
        ) from None
    except (RuntimeError, EOFError) as error:  # not a zip archive, truncated, ...
        raise CheckpointError(f"{path}: cannot read this {what} ({error}); the file may be truncated or not a "
                              "torch file") from error


def load_untrusted(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """`torch.load` of a file from elsewhere (an original VITS `D_*.pth`, EnCodec, HuBERT, `pytorch_model.bin`):
    tensors, numbers, strings and containers only; anything else raises a `CheckpointError` naming it."""
    hint = "Such files hold only tensors, numbers and optimiser state: get this one from its original source."
    with _refusing(path, what, (), hint):
        return torch.load(path, map_location=map_location, weights_only=True)


@contextmanager
def checkpoint_unpickling(path: str | os.PathLike) -> Iterator[None]:
    """The context a `weights_only=True` load of a speechtrain Lightning checkpoint runs in: the types of
    `CHECKPOINT_SAFE_GLOBALS` allowed, anything else refused (`CheckpointError` naming type, file and `TRUST_HINT`).
    For loads that go through Lightning's own `torch.load` (resume)."""
    with _refusing(path, "speechtrain checkpoint", CHECKPOINT_SAFE_GLOBALS, TRUST_HINT):
        yield


def load_checkpoint(path: str | os.PathLike, trust: bool = False, map_location: Any = "cpu") -> dict[str, Any]:
    """A speechtrain Lightning checkpoint (`.ckpt`), refusing content that could run code unless `trust`."""
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    with checkpoint_unpickling(path):
        return torch.load(path, map_location=map_location, weights_only=True)
