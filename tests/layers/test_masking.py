import math

import pytest
import torch

from speechtrain.layers.masking import mask_fraction, masked_count, random_subset


def test_schedules_match_their_formulas():
    times = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(mask_fraction(times, "cosine"), torch.tensor([1.0, math.cos(math.pi / 8), math.sqrt(0.5),
                                                                        0.0]), atol=1e-6)
    assert torch.allclose(mask_fraction(times, "linear"), torch.tensor([1.0, 0.75, 0.5, 0.0]))
    with pytest.raises(ValueError, match="unknown"):
        mask_fraction(times, "square")


def test_masked_count_is_floor_with_a_minimum_and_a_cap():
    available = torch.tensor([10, 10, 10, 3, 0, 20])
    fraction = torch.tensor([0.25, 0.0, 1.0, 0.5, 0.5, 0.15])
    assert masked_count(available, fraction).tolist() == [2, 1, 10, 1, 0, 3]
    assert masked_count(available, fraction, minimum=0).tolist() == [2, 0, 10, 1, 0, 3]


def test_random_subset_picks_exact_counts_inside_candidates():
    candidates = torch.zeros(3, 12, dtype=torch.bool)
    candidates[0, 2:9] = True
    candidates[1, ::2] = True
    candidates[2, :3] = True
    counts = torch.tensor([4, 6, 5])  # row 2 has only 3 candidates
    subset = random_subset(candidates, counts, torch.Generator().manual_seed(0))
    assert subset.sum(1).tolist() == [4, 6, 3]
    assert not (subset & ~candidates).any()
    other = random_subset(candidates, counts, torch.Generator().manual_seed(1))
    assert not torch.equal(subset[0], other[0]) or not torch.equal(subset[1], other[1])
