import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from speechtrain.layers import alignment
from speechtrain.layers.alignment import monotonic_alignment_search

HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="needs numba (the dev or speed extra)")
# the CPU backends: each test below runs on both, so that the torch DP stays tested where numba is the default
CPU_BACKENDS = ["torch", pytest.param("numba", marks=needs_numba)]


def reference_path(value: np.ndarray, text_len: int, frames: int) -> tuple[np.ndarray, float]:
    """jaywalnut310/vits `maximum_path_each` in plain Python (text-first layout): path and its best score."""
    value, path = value.copy(), np.zeros_like(value)
    for y in range(frames):
        for x in range(max(0, text_len + y - frames), min(text_len, y + 1)):
            v_cur = -1e9 if x == y else value[x, y - 1]
            v_prev = (0.0 if y == 0 else -1e9) if x == 0 else value[x - 1, y - 1]
            value[x, y] += max(v_prev, v_cur)
    index = text_len - 1
    for y in range(frames - 1, -1, -1):
        path[index, y] = 1
        if index != 0 and (index == y or value[index, y - 1] < value[index - 1, y - 1]):
            index -= 1
    return path, value[text_len - 1, frames - 1]


def padded_batch(text_lengths: list[int], frame_lengths: list[int], seed: int, dtype=torch.float64):
    """Random log-likelihood `[batch, max_text, max_frames]` and its right-padded outer-product mask."""
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.arange(max(text_lengths)) < torch.tensor(text_lengths)[:, None]
    frame_mask = torch.arange(max(frame_lengths)) < torch.tensor(frame_lengths)[:, None]
    log_likelihood = torch.randn(len(text_lengths), max(text_lengths), max(frame_lengths), generator=generator)
    return log_likelihood.to(dtype), text_mask[:, :, None] & frame_mask[:, None, :]


CASES = {
    "padded": ([12, 5, 9, 1], [40, 30, 9, 25]),  # varied lengths, text_len == frames, a single token
    "long_text": ([30, 18], [45, 20]),  # text longer than half the frames
    "equal_lengths": ([7, 7], [7, 7]),
    "single_frame": ([1, 1], [1, 6]),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_equal_to_reference(case, seed, backend):
    text_lengths, frame_lengths = CASES[case]
    log_likelihood, mask = padded_batch(text_lengths, frame_lengths, seed)
    path = monotonic_alignment_search(log_likelihood, mask, backend=backend)
    assert path.dtype == log_likelihood.dtype and path.shape == log_likelihood.shape
    for item, (text_len, frames) in enumerate(zip(text_lengths, frame_lengths)):
        expected, best_score = reference_path(log_likelihood[item, :text_len, :frames].numpy(), text_len, frames)
        np.testing.assert_array_equal(path[item, :text_len, :frames].numpy(), expected)
        assert path[item].sum() == frames  # padded positions are zero
        assert abs((path[item] * log_likelihood[item]).sum().item() - best_score) < 1e-9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_path_properties(seed, dtype, backend):
    text_lengths, frame_lengths = [25, 3, 16, 40], [60, 50, 16, 55]
    log_likelihood, mask = padded_batch(text_lengths, frame_lengths, seed, dtype=dtype)
    path = monotonic_alignment_search(log_likelihood, mask, backend=backend)
    assert path.dtype == dtype
    assert set(path.unique().tolist()) <= {0.0, 1.0} and not path[~mask].any()
    for item, (text_len, frames) in enumerate(zip(text_lengths, frame_lengths)):
        valid = path[item, :text_len, :frames]
        assert (valid.sum(0) == 1).all()  # each frame on exactly one token
        assert (valid.sum(1) >= 1).all()  # each token at least one frame
        token_of_frame = valid.argmax(0)
        assert token_of_frame[0] == 0 and token_of_frame[-1] == text_len - 1
        assert set(token_of_frame.diff().tolist()) <= {0, 1}  # in order, no token skipped


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_score_is_the_brute_force_maximum(backend):
    text_len, frames = 4, 9
    log_likelihood, mask = padded_batch([text_len], [frames], seed=7)
    path = monotonic_alignment_search(log_likelihood, mask, backend=backend)
    best = -np.inf  # every alignment: choose the frames where tokens 1.. start
    for starts in itertools.combinations(range(1, frames), text_len - 1):
        token_of_frame = np.searchsorted(starts, np.arange(frames), side="right")
        best = max(best, log_likelihood[0, token_of_frame, np.arange(frames)].sum().item())
    assert abs((path * log_likelihood).sum().item() - best) < 1e-9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_padded_positions_are_ignored(backend):
    log_likelihood, mask = padded_batch([6, 3, 0], [20, 11, 0], seed=3)  # the last item is all padding
    path = monotonic_alignment_search(log_likelihood, mask, backend=backend)
    garbage = log_likelihood.masked_fill(~mask, float("nan"))
    garbage[1, 3:, :5] = float("inf")
    assert torch.equal(monotonic_alignment_search(garbage, mask.float(), backend=backend), path)
    assert path[2].sum() == 0 and path[:2].sum() == 20 + 11


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ties_stay_on_the_token_as_vits(backend):
    log_likelihood, mask = torch.zeros(1, 3, 6), torch.ones(1, 3, 6, dtype=torch.bool)
    expected, _ = reference_path(np.zeros((3, 6), dtype=np.float32), 3, 6)  # all paths score the same
    path = monotonic_alignment_search(log_likelihood, mask, backend=backend)
    np.testing.assert_array_equal(path[0].numpy(), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_masks_raise_clear_errors(backend):
    log_likelihood, mask = padded_batch([3, 6], [8, 5], seed=0)
    with pytest.raises(ValueError, match="batch item 1: 6 tokens > 5 frames"):
        monotonic_alignment_search(log_likelihood, mask, backend=backend)
    log_likelihood, mask = padded_batch([3, 4], [8, 5], seed=0)
    mask[0, 1, :] = False  # a hole in the text
    with pytest.raises(ValueError, match="right padding; its text axis"):
        monotonic_alignment_search(log_likelihood, mask, backend=backend)
    with pytest.raises(ValueError, match=r"got \(2, 4, 8\) and \(2, 8, 4\)"):
        monotonic_alignment_search(log_likelihood, mask.transpose(1, 2), backend=backend)


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["text_first", "frames_first", "strided"]


def scenario(case: str, scores: str, dtype: torch.dtype, layout: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch of `CASES[case]` for the backend tests, NaN at every padded position: `scores` "normal" or
    "integer" (small integers, so that many paths tie), stored `layout` "text_first" (contiguous),
    "frames_first" (VITS's `neg_cent.transpose(1, 2)`) or "strided" (every other frame of a larger tensor)."""
    log_likelihood, mask = padded_batch(*CASES[case], seed)
    if scores == "integer":
        log_likelihood = log_likelihood.mul(1.5).round()  # -4..4: exact in every dtype
    log_likelihood = log_likelihood.masked_fill(~mask, float("nan")).to(dtype)
    if layout == "frames_first":
        log_likelihood = log_likelihood.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "strided":
        log_likelihood = log_likelihood.repeat_interleave(2, dim=2)[:, :, ::2]
    return log_likelihood, mask


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scores", ["normal", "integer"])
@pytest.mark.parametrize("case", CASES)
def test_every_dtype_and_layout_gives_the_reference_path(case, scores, dtype, layout, backend):
    """core.pyx's path, summed in float32 (float64 for float64 scores) as the torch DP does, ties included."""
    log_likelihood, mask = scenario(case, scores, dtype, layout)
    path = monotonic_alignment_search(log_likelihood, mask, backend=backend)
    assert path.dtype == dtype and path.shape == log_likelihood.shape
    numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
    for item, (text_len, frames) in enumerate(zip(*CASES[case])):
        scores_item = log_likelihood[item, :text_len, :frames].to(torch.float64).numpy().astype(numpy_dtype)
        expected, _ = reference_path(scores_item, text_len, frames)
        np.testing.assert_array_equal(path[item, :text_len, :frames].double().numpy(), expected)
        assert path[item].sum() == frames  # zero at padded positions


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_autograd_and_empty_batches(backend):
    log_likelihood, mask = padded_batch([5, 2], [9, 4], seed=1, dtype=torch.float32)
    path = monotonic_alignment_search(log_likelihood.requires_grad_(), mask, backend=backend)
    assert not path.requires_grad and path.sum() == 9 + 4
    for shape in [(0, 3, 5), (2, 0, 5), (2, 3, 0)]:
        path = monotonic_alignment_search(torch.zeros(shape, dtype=torch.float16), torch.zeros(shape), backend=backend)
        assert path.shape == shape and path.dtype == torch.float16


def test_backend_choice_and_its_errors(monkeypatch):
    log_likelihood, mask = padded_batch([3], [5], seed=0)
    with pytest.raises(ValueError, match="backend='cython': expected one of 'auto', 'torch'"):
        monotonic_alignment_search(log_likelihood, mask, backend="cython")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' runs on CUDA tensors"):
        monotonic_alignment_search(log_likelihood, mask, backend="triton")
    if HAS_NUMBA:  # auto on a CPU is numba
        assert alignment.resolve_backend("auto", torch.device("cpu")) == "numba"
    monkeypatch.setattr(alignment, "_compiled_backend", lambda compiler: None)  # as if neither were installed
    with pytest.raises(ImportError, match=r"backend='numba' needs numba: pip install \"speechtrain\[speed\]\""):
        monotonic_alignment_search(log_likelihood, mask, backend="numba")
    assert alignment.resolve_backend("auto", torch.device("cpu")) == "torch"  # auto falls back to the torch DP
    expected, _ = reference_path(log_likelihood[0].numpy(), 3, 5)
    assert torch.equal(monotonic_alignment_search(log_likelihood, mask), torch.from_numpy(expected)[None])


@needs_numba
def test_the_numba_backend_leaves_torchs_thread_count_alone():
    """numba's OpenMP layer shares torch's runtime: one call used to raise torch's intra-op threads from 1 to 2,
    changing the last bits of later CPU results (a resumed VITS run then ended elsewhere than the whole one)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        log_likelihood = torch.randn(4, 10, 30, generator=torch.Generator().manual_seed(0))
        monotonic_alignment_search(log_likelihood, torch.ones_like(log_likelihood), backend="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_importing_the_module_loads_neither_numba_nor_triton():
    code = "import sys, speechtrain.layers.alignment; print(sorted({'numba', 'triton'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (it comes with torch on Linux)")
def test_triton_kernel_interpreted_gives_the_torch_path(tmp_path):
    """The CUDA kernel, run on CPU tensors by Triton's interpreter: TRITON_INTERPRET=1 must be set before triton
    is imported, hence a subprocess, which gets the batches and returns its paths through files."""
    # every case in every dtype, score kinds (a checkerboard) and layouts taking turns: ~0.1 s a batch interpreted
    batches = [scenario(case, ["normal", "integer"][(index + index // len(DTYPES)) % 2], dtype,
                        LAYOUTS[index % len(LAYOUTS)])
               for index, (case, dtype) in enumerate(itertools.product(CASES, DTYPES))]
    log_likelihood, mask = padded_batch([6, 3, 0], [20, 11, 0], seed=3)  # an item all padding, inf in padding
    batches.append((log_likelihood.masked_fill(~mask, float("inf")), mask.float()))
    batches.append((torch.zeros(2, 0, 5), torch.zeros(2, 0, 5)))
    torch.save(batches, tmp_path / "batches.pt")
    script = textwrap.dedent("""
        import sys
        import torch
        from speechtrain.layers.alignment import monotonic_alignment_search
        batches = torch.load(sys.argv[1])
        torch.save([monotonic_alignment_search(*batch, backend="triton") for batch in batches], sys.argv[2])
    """)
    result = subprocess.run([sys.executable, "-c", script, tmp_path / "batches.pt", tmp_path / "paths.pt"],
                            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for (log_likelihood, mask), path in zip(batches, torch.load(tmp_path / "paths.pt"), strict=True):
        assert path.dtype == log_likelihood.dtype
        assert torch.equal(path, monotonic_alignment_search(log_likelihood, mask, backend="torch"))
