import math

import pytest
import torch

from speechtrain.layers.specaugment import FilterbankSpecAugment

LENGTHS = (300, 180, 40, 7)


def batch(bins=80):
    """Features far from the mask value (0) so masked cells are exactly the zeros, and a right-padded mask."""
    frame_mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]  # [4, 300]
    features = (torch.rand(len(LENGTHS), max(LENGTHS), bins) + 1.0) * frame_mask[..., None]
    return features, frame_mask


def masked_spans(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, width) of each run of True in a 1-D bool tensor."""
    spans, start = [], None
    for index, value in enumerate(row.tolist() + [False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            spans.append((start, index - start))
            start = None
    return spans


def masked_rows(augment, seeds=range(30)):
    """(masked cells `[frames, bins]` of one utterance's real frames, its length) for every utterance of
    `batch()` masked under each seed; padding must come out untouched."""
    features, frame_mask = batch()
    for seed in seeds:
        torch.manual_seed(seed)
        out = augment(features, frame_mask)
        assert torch.equal(out[~frame_mask], features[~frame_mask])
        for row, length in enumerate(LENGTHS):
            yield out[row, :length] == 0, length


def test_fairseq_policies():
    lb, ld = FilterbankSpecAugment.from_policy("lb"), FilterbankSpecAugment.from_policy("ld")
    assert (lb.freq_mask_n, lb.freq_mask_f, lb.time_mask_n, lb.time_mask_t, lb.time_mask_p) == (1, 27, 1, 100, 1.0)
    assert (ld.freq_mask_n, ld.freq_mask_f, ld.time_mask_n, ld.time_mask_t, ld.time_mask_p) == (2, 27, 2, 100, 1.0)
    assert lb.mask_value is None and lb.enabled and not FilterbankSpecAugment.from_policy("none").enabled
    assert FilterbankSpecAugment.from_policy("lb", time_mask_p=0.2).time_mask_p == 0.2
    with pytest.raises(ValueError, match="policy 'lx'"):
        FilterbankSpecAugment.from_policy("lx")
    with pytest.raises(ValueError, match="time_mask_p"):
        FilterbankSpecAugment(time_mask_p=1.5)


@pytest.mark.parametrize("policy", ["lb", "ld", "sm"])
def test_frequency_bands_cover_whole_bins_within_bounds(policy):
    augment = FilterbankSpecAugment.from_policy(policy, time_mask_n=0, mask_value=0.0)
    widest = 0
    for zeros, _ in masked_rows(augment):
        bins = zeros[0]
        assert torch.equal(zeros, bins.expand_as(zeros))  # a band masks its bins on every real frame
        assert len(masked_spans(bins)) <= augment.freq_mask_n  # overlapping bands may merge
        assert int(bins.sum()) <= augment.freq_mask_n * (augment.freq_mask_f - 1)
        widest = max(widest, int(bins.sum()))
    assert widest > augment.freq_mask_f // 2  # bands do happen, and wide ones


@pytest.mark.parametrize("policy", ["lb", "ld", "sm"])
def test_time_spans_cover_whole_frames_within_bounds(policy):
    augment = FilterbankSpecAugment.from_policy(policy, freq_mask_n=0, mask_value=0.0)
    widest = 0
    for zeros, length in masked_rows(augment):
        frames = zeros[:, 0]
        assert torch.equal(zeros, frames[:, None].expand_as(zeros))  # a span masks every bin of its frames
        cap = min(augment.time_mask_t, math.floor(length * augment.time_mask_p))
        assert len(masked_spans(frames)) <= augment.time_mask_n
        assert int(frames.sum()) <= augment.time_mask_n * max(cap - 1, 0)
        widest = max(widest, int(frames.sum()))
    assert widest > 20


def test_time_masks_respect_the_proportion_cap():
    augment = FilterbankSpecAugment(time_mask_n=1, time_mask_t=100, time_mask_p=0.2, mask_value=0.0)
    features, frame_mask = batch()
    widths = {length: 0 for length in LENGTHS}
    for seed in range(200):
        torch.manual_seed(seed)
        masked = (augment(features, frame_mask) == 0).all(dim=2) & frame_mask  # [B, T] masked frames
        for row, length in enumerate(LENGTHS):
            widths[length] = max(widths[length], int(masked[row].sum()))
    # T' = min(100, floor(0.2 * length)) and widths are drawn below T'; 7 frames give T' = 1: no masking
    assert widths == {300: 59, 180: 35, 40: 7, 7: 0}


def test_default_mask_value_is_each_utterances_mean():
    augment = FilterbankSpecAugment(freq_mask_n=1, freq_mask_f=27, time_mask_n=1, time_mask_t=100, time_mask_p=1.0)
    features, frame_mask = batch()
    torch.manual_seed(0)
    out = augment(features, frame_mask)
    changed = out != features
    for row, length in enumerate(LENGTHS[:3]):
        mean = features[row, :length].mean()
        assert changed[row].any()
        torch.testing.assert_close(out[row][changed[row]], mean.expand(int(changed[row].sum())))


def test_deterministic_under_a_torch_seed():
    augment = FilterbankSpecAugment.from_policy("ld")
    features, frame_mask = batch()
    torch.manual_seed(5)
    first = augment(features, frame_mask)
    torch.manual_seed(5)
    second = augment(features, frame_mask)
    third = augment(features, frame_mask)
    assert torch.equal(first, second) and not torch.equal(first, third)
    assert not torch.equal(first, features)
    with pytest.raises(ValueError, match=r"\[batch, frames, bins\]"):
        augment(features[0])
