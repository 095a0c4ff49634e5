"""The CPU backend of `speechtrain.layers.alignment`: monotonic alignment search compiled with numba.

The loops of jaywalnut310/vits `monotonic_align/core.pyx` (one batch item per thread with `prange`, no GIL,
only the band of cells that a full path can cross), changed so as to cost nothing around them: frames-first
scores (VITS's `neg_cent`) are read where they lie, with no copy and no float64 promotion, and text-first ones
are transposed item by item in the thread that aligns the item; the DP keeps two rows of scores and one byte
per cell for the decision, not a float score per cell, and its inner loop is vectorised; the path is written
straight into the output tensor. Imported on the first CPU call, so that importing the alignment module does
not load numba; `cache=True` keeps the machine code on disk, so only the first process compiles it (~8 s).
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from torch import Tensor

# numba's OpenMP threading layer shares torch's OpenMP runtime, so its thread settings changed torch's intra-op
# thread count (1 -> 2 after one call), and with it the last bits of every later CPU result: a resumed run no
# longer computed what the uninterrupted one did. The workqueue layer keeps its own threads. A layer the user chose
# (NUMBA_THREADING_LAYER) stands; torch's count is restored after each call either way.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


def maximum_path(log_likelihood: Tensor, text_lengths: Tensor, frame_lengths: Tensor) -> Tensor:
    """`[batch, text_len, frames]` 0/1 path in `log_likelihood`'s dtype and memory layout, for the lengths
    `[batch]` that `monotonic_alignment_search` has checked. float16 and bfloat16 scores are read as float32,
    as the torch DP does; a layout other than frames-first or text-first contiguous costs one copy."""
    batch, text_len, frames = log_likelihood.shape
    values = log_likelihood.detach()
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()  # keeps the layout
    frames_first = values.transpose(1, 2).is_contiguous()
    values = values.transpose(1, 2) if frames_first else values.contiguous()  # [batch, frames, text] or as given
    path = torch.empty(batch, text_len * frames, dtype=log_likelihood.dtype)  # the storage, each item's together
    # the 1.0 of the output's dtype as bytes: one compiled kernel writes every float dtype
    one = torch.ones(1, dtype=path.dtype).view(torch.uint8).numpy()
    threads, torch_threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        _maximum_paths(values.numpy(), frames_first, text_lengths.numpy(), frame_lengths.numpy(),
                       path.view(torch.uint8).numpy(), one)
    finally:
        numba.set_num_threads(threads)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    if frames_first:
        return path.view(batch, frames, text_len).transpose(1, 2)
    return path.view(batch, text_len, frames)


@numba.njit(parallel=True, nogil=True, cache=True)
def _maximum_paths(values: np.ndarray, frames_first: bool, text_lengths: np.ndarray, frame_lengths: np.ndarray,
                   path: np.ndarray, one: np.ndarray) -> None:
    """core.pyx `maximum_path_c`, one item per thread. `values`: `[batch, frames, text]` if `frames_first`
    else `[batch, text, frames]`, C-contiguous; `path`: the output's bytes `[batch, text * frames * itemsize]`,
    laid out as `values`; `one`: the bytes of 1.0 in the output's dtype."""
    for item in numba.prange(values.shape[0]):
        _maximum_path_each(values[item], frames_first, text_lengths[item], frame_lengths[item], path[item], one)


@numba.njit(nogil=True, cache=True)
def _maximum_path_each(values: np.ndarray, frames_first: bool, text_len: int, frames: int, path: np.ndarray,
                       one: np.ndarray) -> None:
    """core.pyx `maximum_path_each` for one item: the DP, then the backtrack writing the path."""
    path[:] = 0
    if text_len == 0:
        return
    # the path's cell (token, frame) is element token * text_stride + frame * frame_stride of the item
    text_stride, frame_stride = (1, values.shape[1]) if frames_first else (values.shape[1], 1)
    if not frames_first:
        values = _frames_first(values, text_len, frames)  # [frames, text_len]
    # advanced[j, i]: the best path to (frame j, token i) comes from token i - 1; ties stay (row 0 unused)
    advanced = np.empty((frames, text_len), dtype=np.bool_)
    # scores[1 + i]: best sum over paths putting the frame on token i; index 0 is a virtual token at -inf, and
    # so is every token the path cannot have reached yet. Two rows: the previous frame's and this one's.
    previous = np.full(1 + text_len, -np.inf, dtype=values.dtype)
    current = np.full(1 + text_len, -np.inf, dtype=values.dtype)
    previous[1] = values[0, 0]  # frame 0 is on token 0
    for frame in range(1, frames):
        # the band core.pyx computes: token i needs i frames before it and text_len - i from it on
        first, last = max(0, text_len - frames + frame), min(text_len, frame + 1)
        _advance(previous, current, advanced[frame], values[frame], first, last)
        previous, current = current, previous

    itemsize = one.shape[0]
    token = text_len - 1
    for frame in range(frames - 1, -1, -1):
        start = (token * text_stride + frame * frame_stride) * itemsize
        path[start:start + itemsize] = one
        if frame:
            token -= advanced[frame, token]


@numba.njit(nogil=True, cache=True)
def _frames_first(values: np.ndarray, text_len: int, frames: int) -> np.ndarray:
    """The real part of a text-first item `[text, frames]` copied frames-first `[frames, text_len]`, so that the
    DP reads each frame contiguously: reading columns of the text-first item costs it twice the copy's time."""
    transposed = np.empty((frames, text_len), dtype=values.dtype)
    for start in range(0, text_len, 16):  # 16 tokens at a time: the rows read stay in the L1 cache
        for frame in range(np.uintp(frames)):
            for token in range(np.uintp(start), np.uintp(min(start + 16, text_len))):
                transposed[frame, token] = values[token, frame]
    return transposed


@numba.njit(nogil=True, cache=True)
def _advance(previous: np.ndarray, current: np.ndarray, advanced: np.ndarray, frame_values: np.ndarray,
             first: int, last: int) -> None:
    """One frame of the DP over tokens `first..last - 1`: stay on a token or come from the one before.
    Unsigned indices, so that numba adds no negative-index wrap-around and LLVM vectorises the loop (5x)."""
    for token in range(np.uintp(first), np.uintp(last)):
        score = token + np.uintp(1)  # scores are shifted by the virtual token
        came_from_previous, stay = previous[score - np.uintp(1)], previous[score]
        advance = came_from_previous > stay
        advanced[token] = advance
        current[score] = (came_from_previous if advance else stay) + frame_values[token]
