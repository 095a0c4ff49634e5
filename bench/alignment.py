"""Monotonic alignment search: speechtrain's default backend (numba on a CPU, Triton on CUDA) and its torch DP
against a numba build of jaywalnut310/vits's `monotonic_align/core.pyx` (same loops, `prange` over the batch as
the Cython does), in one process.

    python bench/alignment.py                   # CPU, four VITS-like shapes
    python bench/alignment.py --device cuda     # ours on the GPU; the reference on the CPU with VITS's copies
    python bench/alignment.py --text-first      # scores stored text-first instead of frames-first

The scores are made as VITS makes `neg_cent`, frames first `[batch, frames, text]`, and handed to
speechtrain as the view `neg_cent.transpose(1, 2)`, which it reads without a copy. The reference is timed
the way VITS calls it: tensor -> float32 NumPy (host copy) -> numba -> tensor on the device. All three must give
the same path before anything is timed. Prints a markdown table (median of `--repeats` runs, ours alternating
with the reference, after a warm-up, which also compiles) to paste into docs/benchmarks.md. Needs the `bench`
extra (numba).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from speechtrain.layers.alignment import monotonic_alignment_search, resolve_backend

SHAPES = [(16, 50, 200), (16, 100, 500), (32, 150, 600), (32, 200, 1000)]  # (batch, max text, max frames)


@numba.njit(nogil=True, boundscheck=False)
def _maximum_path_each(path, value, t_y, t_x, max_neg_val=-1e9):
    """core.pyx `maximum_path_each`: value [frames, text] is overwritten with the DP scores."""
    index = t_x - 1
    for y in range(t_y):
        for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
            v_cur = max_neg_val if x == y else value[y - 1, x]
            if x == 0:
                v_prev = 0.0 if y == 0 else max_neg_val
            else:
                v_prev = value[y - 1, x - 1]
            value[y, x] += max(v_prev, v_cur)
    for y in range(t_y - 1, -1, -1):
        path[y, index] = 1
        if index != 0 and (index == y or value[y - 1, index] < value[y - 1, index - 1]):
            index -= 1


@numba.njit(nogil=True, parallel=True)
def numba_maximum_path_c(paths, values, t_ys, t_xs):
    """core.pyx `maximum_path_c`, the signature VITS and Piper import: paths/values [batch, frames, text]."""
    for b in numba.prange(paths.shape[0]):
        _maximum_path_each(paths[b], values[b], t_ys[b], t_xs[b])


def numba_alignment_search(log_likelihood: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VITS's `monotonic_align.maximum_path`, text-first: [batch, text, frames] in and out."""
    neg_cent = log_likelihood.transpose(1, 2)  # [batch, frames, text]
    values = np.ascontiguousarray(neg_cent.cpu().numpy().astype(np.float32))
    paths = np.zeros(values.shape, dtype=np.int32)
    frame_lengths = mask[:, 0, :].sum(1).cpu().numpy().astype(np.int32)
    text_lengths = mask[:, :, 0].sum(1).cpu().numpy().astype(np.int32)
    numba_maximum_path_c(paths, values, frame_lengths, text_lengths)
    return torch.from_numpy(paths).transpose(1, 2).to(device=log_likelihood.device, dtype=log_likelihood.dtype)


def random_batch(batch: int, text_len: int, frames: int, device: str, text_first: bool = False, seed: int = 0):
    """VITS-like batch `[batch, text, frames]`: lengths from 60% to 100% of the maximum, scores like `neg_cent`
    (a frames-first tensor seen transposed, unless `text_first`)."""
    generator = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(int(0.6 * text_len), text_len + 1, (batch,), generator=generator)
    text_lengths[0] = text_len
    frame_lengths = torch.randint(int(0.6 * frames), frames + 1, (batch,), generator=generator)
    frame_lengths = torch.maximum(frame_lengths, text_lengths)
    frame_lengths[0] = frames
    text_mask = torch.arange(text_len) < text_lengths[:, None]
    frame_mask = torch.arange(frames) < frame_lengths[:, None]
    mask = (text_mask[:, :, None] & frame_mask[:, None, :]).float()
    neg_cent = -torch.rand(batch, frames, text_len, generator=generator) * 10 - 50  # [batch, frames, text]
    log_likelihood = neg_cent.to(device).transpose(1, 2)
    return (log_likelihood.contiguous() if text_first else log_likelihood), mask.to(device)


def median_seconds(functions: list[Callable[..., torch.Tensor]], inputs: tuple, repeats: int, device: str):
    """Median wall time of each function on `inputs`, runs alternating so that none gets a quieter machine."""
    times = [[] for _ in functions]
    for repeat in range(repeats + 1):  # the first round warms up (numba and Triton compile on the first call)
        for function, function_times in zip(functions, times):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            function(*inputs)
            if device == "cuda":
                torch.cuda.synchronize()
            if repeat:
                function_times.append(time.perf_counter() - start)
    return [statistics.median(function_times) for function_times in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=50, help="timed runs of each (the shortest take ~0.1 ms)")
    parser.add_argument("--text-first", action="store_true", help="scores contiguous as [batch, text, frames]")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: all cores)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"
    auto = resolve_backend("auto", torch.device(args.device))
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, numba {numba.__version__}, "
          f"torch threads {torch.get_num_threads()}, numba threads {numba.get_num_threads()}, "
          f"scores {'text' if args.text_first else 'frames'}-first in memory, speechtrain's default: {auto}\n")
    print(f"| batch | max text | max frames | speechtrain {auto} (ms) | speechtrain torch DP (ms) "
          f"| numba core.pyx (ms) | ours / numba | torch DP / numba |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ours(log_likelihood: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return monotonic_alignment_search(log_likelihood, mask)

    def torch_dp(log_likelihood: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return monotonic_alignment_search(log_likelihood, mask, backend="torch")

    for batch, text_len, frames in SHAPES:
        log_likelihood, mask = random_batch(batch, text_len, frames, args.device, args.text_first)
        reference = numba_alignment_search(log_likelihood, mask)
        for name, function in ((auto, ours), ("torch DP", torch_dp)):
            path = function(log_likelihood, mask)
            if not torch.equal(path, reference):
                raise SystemExit(f"{name}: paths differ for shape {(batch, text_len, frames)}: "
                                 f"{int((path != reference).sum())} cells")
        # ours and the reference alternate; the torch DP runs apart, as its allocations would slow the next call
        ours_s, numba_s = median_seconds([ours, numba_alignment_search], (log_likelihood, mask), args.repeats,
                                         args.device)
        (torch_s,) = median_seconds([torch_dp], (log_likelihood, mask), args.repeats, args.device)
        print(f"| {batch} | {text_len} | {frames} | {ours_s * 1e3:.2f} | {torch_s * 1e3:.2f} | {numba_s * 1e3:.2f} | "
              f"{ours_s / numba_s:.2f} | {torch_s / numba_s:.2f} |")


if __name__ == "__main__":
    main()
