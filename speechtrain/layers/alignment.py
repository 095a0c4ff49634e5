"""Monotonic alignment search (Kim et al. 2020, Glow-TTS; reused by VITS): the hard text-to-frame alignment
with the largest summed log-likelihood, by exact dynamic programming.

The original is Cython (jaywalnut310/vits `monotonic_align/core.pyx`), one batch item per thread. Three
backends give its path exactly, ties included (when staying on a token and advancing from the previous one
score the same, the path stays), and `backend="auto"` picks the fastest one available for the device:

- CPU: the core.pyx loops compiled by numba (`alignment_numba`), when numba is installed
  (`pip install "speechtrain[speed]"`). They read VITS's frames-first scores without a copy and write the
  path in place, so they run at or below the original's time, where the torch DP is 2-20x slower.
- CUDA: one Triton kernel for the whole batch (`alignment_triton`, after super-monotonic-align), when triton
  imports (it comes with torch on Linux) and the GPU has compute capability 8.0 or more: no copy to the host
  as the original needs, and one launch where the torch DP launches a few kernels per frame.
- Otherwise (no numba, no triton, another device): the torch DP below, vectorised over the batch and the text
  axis with a loop over frames, which runs wherever the model does with no extra dependency.

`backend=` forces one of them ("torch", "numba", "triton"), for tests and benchmarks. The compiled backends
are imported on the first call that needs them, so importing this module loads neither numba nor triton.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from types import ModuleType

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "numba", "triton")


@torch.no_grad()
def monotonic_alignment_search(log_likelihood: Tensor, mask: Tensor, backend: str = "auto") -> Tensor:
    """Hard monotonic alignment maximising the summed `log_likelihood` over the path.

    Each frame goes to exactly one token, tokens in order, each token gets at least one frame.

    Args:
        log_likelihood: `[batch, text_len, frames]` score of frame `j` coming from token `i`. VITS computes it
            frames-first (`neg_cent`, `[batch, frames, text_len]`): pass `neg_cent.transpose(1, 2)`, which is
            read without a copy (a text-first contiguous tensor costs the torch DP one transposing copy).
        mask: `[batch, text_len, frames]` bool or 0/1, `text_mask[:, :, None] * frame_mask[:, None, :]`
            with right padding. Only its first column and row are read (the lengths, as in VITS), and
            `log_likelihood` at padded positions is ignored, whatever it holds (even inf or NaN).
        backend: "auto" (numba on a CPU, Triton on CUDA, else the torch DP), or one of "torch", "numba" (CPU
            tensors) and "triton" (CUDA tensors, or CPU tensors under `TRITON_INTERPRET=1`).

    Returns:
        `[batch, text_len, frames]` 0/1 path in `log_likelihood`'s dtype, zero at padded positions.

    Raises:
        ValueError: `mask` is not shaped like `log_likelihood` or not right-padded, an item has more tokens
            than frames (no alignment exists; filter such items out of the data), or `backend` is unknown or
            not for this device.
        ImportError: `backend` is "numba" or "triton" and that package is not installed.
    """
    if log_likelihood.dim() != 3 or mask.shape != log_likelihood.shape:
        raise ValueError(
            f"log_likelihood and mask must both be [batch, text_len, frames], got {tuple(log_likelihood.shape)} "
            f"and {tuple(mask.shape)}"
        )
    backend = resolve_backend(backend, log_likelihood.device)
    if log_likelihood.numel() == 0:
        return torch.zeros_like(log_likelihood)
    text_lengths, frame_lengths = _lengths(mask)  # [batch], [batch]
    if backend == "torch":
        return _torch_maximum_path(log_likelihood, text_lengths, frame_lengths)
    return _compiled_backend(backend).maximum_path(log_likelihood, text_lengths, frame_lengths)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that `monotonic_alignment_search(..., backend=backend)` runs on `device`: "torch", "numba"
    or "triton", "auto" resolved as its docstring says; raises its errors for a backend that cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        if device.type == "cpu" and _compiled_backend("numba") is not None:
            return "numba"
        if (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
                and _compiled_backend("triton") is not None):
            return "triton"
        return "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend='numba' runs on CPU tensors, got {device}: move them or use backend='auto'")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' runs on CUDA tensors (CPU ones under TRITON_INTERPRET=1), got {device}")
    if backend != "torch" and _compiled_backend(backend) is None:
        raise ImportError(f"backend={backend!r} needs {backend}: pip install \"speechtrain[speed]\" (numba) or a "
                          f"torch with triton (Linux), or use backend='auto'")
    return backend


@functools.cache
def _compiled_backend(compiler: str) -> ModuleType | None:
    """`speechtrain.layers.alignment_<compiler>`, imported on first use; None when `compiler` (numba or triton)
    is not installed, or is but does not import (then with a warning, and the torch DP runs instead)."""
    if importlib.util.find_spec(compiler) is None:
        return None
    try:
        return importlib.import_module(f"speechtrain.layers.alignment_{compiler}")
    except ImportError as error:
        warnings.warn(f"{compiler} is installed but does not import ({error}); monotonic_alignment_search runs "
                      f"the torch DP instead", stacklevel=2)
        return None


def _torch_maximum_path(log_likelihood: Tensor, text_lengths: Tensor, frame_lengths: Tensor) -> Tensor:
    """The torch DP: the whole batch and text axis at once, a loop over frames of five small ops."""
    batch, text_len, frames = log_likelihood.shape
    device, dtype = log_likelihood.device, torch.promote_types(log_likelihood.dtype, torch.float32)

    # scores[b, 1 + i]: best sum over paths putting the current frame on token i. Column 0 is a virtual token at
    # -inf, so token 0 can only stay and each DP step is one max over neighbours. Only the decisions are kept:
    # advanced[b, j, i] is True when the best path to (frame j, token i) comes from token i - 1 (ties stay).
    values = log_likelihood.to(dtype).transpose(1, 2).contiguous()  # [batch, frames, text_len], rows contiguous
    scores = torch.full((batch, 1 + text_len), -torch.inf, dtype=dtype, device=device)
    scores[:, 1] = values[:, 0, 0]  # frame 0 is on token 0
    came_from_previous, stay = scores[:, :-1], scores[:, 1:]  # [batch, text_len] views
    best = torch.empty(batch, text_len, dtype=dtype, device=device)
    advanced = torch.empty(batch, frames, text_len, dtype=torch.bool, device=device)  # frame 0 unused
    for frame_values, frame_advanced in zip(values.unbind(1)[1:], advanced.unbind(1)[1:]):
        torch.gt(came_from_previous, stay, out=frame_advanced)
        torch.maximum(came_from_previous, stay, out=best)
        torch.add(best, frame_values, out=stay)

    # Padded frames stay on the last token, so each item's backtrack starts at its own last frame and token.
    frame_mask = torch.arange(frames, device=device) < frame_lengths[:, None]  # [batch, frames]
    shortest = int(frame_lengths.min())
    advanced[:, shortest:].masked_fill_(~frame_mask[:, shortest:, None], False)
    advanced = advanced.view(torch.uint8)  # to subtract it from token indices
    token = (text_lengths - 1).clamp(min=0)[:, None]  # [batch, 1]
    tokens = [token]
    for step in reversed(advanced.unbind(1)[1:]):  # frames - 1 down to 1
        token = token - step.gather(1, token)
        tokens.append(token)
    tokens = torch.cat(tokens[::-1], dim=1)  # [batch, frames]
    path = torch.zeros_like(log_likelihood)  # [batch, text_len, frames]
    return path.scatter_(1, tokens[:, None, :], frame_mask[:, None, :].to(path.dtype))


def _lengths(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Text and frame lengths `[batch]` read off the mask's first column and row (as VITS does), checked."""
    text_row, frame_row = mask[:, :, 0].bool(), mask[:, 0, :].bool()  # [batch, text_len], [batch, frames]
    text_lengths, frame_lengths = text_row.sum(1), frame_row.sum(1)
    for name, row, lengths in (("text", text_row, text_lengths), ("frame", frame_row, frame_lengths)):
        if not torch.equal(row, torch.arange(row.shape[1], device=row.device) < lengths[:, None]):
            raise ValueError(
                f"mask must be text_mask[:, :, None] * frame_mask[:, None, :] with right padding; its {name} axis "
                f"has padding before real positions"
            )
    impossible = (text_lengths > frame_lengths).nonzero().flatten().tolist()
    if impossible:
        texts, frames = text_lengths.tolist(), frame_lengths.tolist()
        items = ", ".join(f"item {i}: {texts[i]} tokens > {frames[i]} frames" for i in impossible[:5])
        raise ValueError(
            f"monotonic_alignment_search: no alignment exists when text is longer than the frames "
            f"(each token needs at least one frame); batch {items}. Filter such items out of the data."
        )
    return text_lengths, frame_lengths
