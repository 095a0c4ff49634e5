"""The CUDA backend of `speechtrain.layers.alignment`: monotonic alignment search as one Triton kernel.

After supertone-inc/super-monotonic-align: one program per batch item, a loop over frames with the text axis
as one block, then the backtrack in the same program, so that a whole batch is one launch where the torch
DP launches a few kernels per frame. Two changes: the scores of the current frame stay in registers (the
shift to the previous token is a `tl.gather`, not a round trip through memory that needs a single warp to
stay ordered), and the input is read with its strides, never copied nor written (super-monotonic-align runs
the DP in place in the caller's tensor); one byte per cell keeps the decisions for the backtrack. Imported on
the first CUDA call, so that importing the alignment module does not load triton.

Both loops are `while` loops because Triton 3.6's interpreter (`TRITON_INTERPRET=1`, which runs this kernel
on CPU tensors in the tests) cannot take a tensor as a `range` bound under NumPy 2.4
(triton-lang/triton#9171); compiled, a `while` loop is the same loop.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


def maximum_path(log_likelihood: Tensor, text_lengths: Tensor, frame_lengths: Tensor) -> Tensor:
    """`[batch, text_len, frames]` 0/1 path in `log_likelihood`'s dtype and layout, for the lengths `[batch]`
    that `monotonic_alignment_search` has checked. Sums in float32 (float64 for float64 scores), as the torch
    DP does."""
    batch, text_len, frames = log_likelihood.shape
    path = torch.zeros_like(log_likelihood)  # [batch, text_len, frames]
    advanced = torch.empty(batch, frames, text_len, dtype=torch.int8, device=log_likelihood.device)
    block = max(triton.next_power_of_2(text_len), 16)  # as super-monotonic-align: no block under 16 tokens
    _maximum_path_kernel[(batch,)](
        log_likelihood.detach(), path, advanced, text_lengths, frame_lengths,
        *log_likelihood.stride(), *path.stride(), advanced.stride(0), advanced.stride(1),
        SUM_DTYPE=tl.float64 if log_likelihood.dtype == torch.float64 else tl.float32, BLOCK=block,
        num_warps=min(max(block // 1024, 1), 16),  # up to 32 tokens a thread; a one-warp gather is shuffles
    )
    return path


@triton.jit
def _maximum_path_kernel(values, path, advanced, text_lengths, frame_lengths,
                         values_batch_stride, values_text_stride, values_frame_stride,
                         path_batch_stride, path_text_stride, path_frame_stride,
                         advanced_batch_stride, advanced_frame_stride,
                         SUM_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """One batch item: `values`/`path` `[batch, text, frames]` with any strides, `advanced` `[batch, frames,
    text]` int8 scratch (whether the best path to (frame, token) comes from the token before)."""
    item = tl.program_id(0).to(tl.int64)
    text_len = tl.load(text_lengths + item)
    frames = tl.load(frame_lengths + item)
    values += item * values_batch_stride
    path += item * path_batch_stride
    advanced += item * advanced_batch_stride
    token = tl.arange(0, BLOCK)
    real = token < text_len

    # scores[i]: best sum over paths putting the current frame on token i; -inf where none can have reached
    first = tl.load(values).to(SUM_DTYPE)  # frame 0 is on token 0
    scores = tl.where(token == 0, first, -float("inf"))
    frame = 1
    while frame < frames:
        came_from_previous = tl.gather(scores, tl.maximum(token - 1, 0), 0)  # scores[i - 1]
        came_from_previous = tl.where(token == 0, -float("inf"), came_from_previous)
        advance = came_from_previous > scores  # ties stay
        tl.store(advanced + frame * advanced_frame_stride + token, advance.to(tl.int8), mask=real)
        frame_values = tl.load(values + token * values_text_stride + frame * values_frame_stride, mask=real,
                               other=0.0).to(SUM_DTYPE)
        scores = tl.where(advance, came_from_previous, scores) + frame_values
        frame += 1

    one = tl.full([], 1.0, tl.float32).to(path.dtype.element_ty)
    last = text_len - 1
    frame = frames - 1
    while frame > 0:
        tl.store(path + last * path_text_stride + frame * path_frame_stride, one)
        last -= tl.load(advanced + frame * advanced_frame_stride + last).to(last.dtype)
        frame -= 1
    tl.store(path, one, mask=frames > 0)  # frame 0 on token 0
