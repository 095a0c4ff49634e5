import itertools

import numpy as np
import pytest
import torch

from speechtrain.layers.alignment import monotonic_alignment_search


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


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_equal_to_reference(case, seed):
    text_lengths, frame_lengths = CASES[case]
    log_likelihood, mask = padded_batch(text_lengths, frame_lengths, seed)
    path = monotonic_alignment_search(log_likelihood, mask)
    assert path.dtype == log_likelihood.dtype and path.shape == log_likelihood.shape
    for item, (text_len, frames) in enumerate(zip(text_lengths, frame_lengths)):
        expected, best_score = reference_path(log_likelihood[item, :text_len, :frames].numpy(), text_len, frames)
        np.testing.assert_array_equal(path[item, :text_len, :frames].numpy(), expected)
        assert path[item].sum() == frames  # padded positions are zero
        assert abs((path[item] * log_likelihood[item]).sum().item() - best_score) < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_path_properties(seed, dtype):
    text_lengths, frame_lengths = [25, 3, 16, 40], [60, 50, 16, 55]
    log_likelihood, mask = padded_batch(text_lengths, frame_lengths, seed, dtype=dtype)
    path = monotonic_alignment_search(log_likelihood, mask)
    assert path.dtype == dtype
    assert set(path.unique().tolist()) <= {0.0, 1.0} and not path[~mask].any()
    for item, (text_len, frames) in enumerate(zip(text_lengths, frame_lengths)):
        valid = path[item, :text_len, :frames]
        assert (valid.sum(0) == 1).all()  # each frame on exactly one token
        assert (valid.sum(1) >= 1).all()  # each token at least one frame
        token_of_frame = valid.argmax(0)
        assert token_of_frame[0] == 0 and token_of_frame[-1] == text_len - 1
        assert set(token_of_frame.diff().tolist()) <= {0, 1}  # in order, no token skipped


def test_score_is_the_brute_force_maximum():
    text_len, frames = 4, 9
    log_likelihood, mask = padded_batch([text_len], [frames], seed=7)
    path = monotonic_alignment_search(log_likelihood, mask)
    best = -np.inf  # every alignment: choose the frames where tokens 1.. start
    for starts in itertools.combinations(range(1, frames), text_len - 1):
        token_of_frame = np.searchsorted(starts, np.arange(frames), side="right")
        best = max(best, log_likelihood[0, token_of_frame, np.arange(frames)].sum().item())
    assert abs((path * log_likelihood).sum().item() - best) < 1e-9


def test_padded_positions_are_ignored():
    log_likelihood, mask = padded_batch([6, 3, 0], [20, 11, 0], seed=3)  # the last item is all padding
    path = monotonic_alignment_search(log_likelihood, mask)
    garbage = log_likelihood.masked_fill(~mask, float("nan"))
    garbage[1, 3:, :5] = float("inf")
    assert torch.equal(monotonic_alignment_search(garbage, mask.float()), path)
    assert path[2].sum() == 0 and path[:2].sum() == 20 + 11


def test_ties_stay_on_the_token_as_vits():
    log_likelihood, mask = torch.zeros(1, 3, 6), torch.ones(1, 3, 6, dtype=torch.bool)
    expected, _ = reference_path(np.zeros((3, 6), dtype=np.float32), 3, 6)  # all paths score the same
    np.testing.assert_array_equal(monotonic_alignment_search(log_likelihood, mask)[0].numpy(), expected)


def test_bad_masks_raise_clear_errors():
    log_likelihood, mask = padded_batch([3, 6], [8, 5], seed=0)
    with pytest.raises(ValueError, match="batch item 1: 6 tokens > 5 frames"):
        monotonic_alignment_search(log_likelihood, mask)
    log_likelihood, mask = padded_batch([3, 4], [8, 5], seed=0)
    mask[0, 1, :] = False  # a hole in the text
    with pytest.raises(ValueError, match="right padding; its text axis"):
        monotonic_alignment_search(log_likelihood, mask)
    with pytest.raises(ValueError, match=r"got \(2, 4, 8\) and \(2, 8, 4\)"):
        monotonic_alignment_search(log_likelihood, mask.transpose(1, 2))
