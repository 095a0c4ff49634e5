import numpy as np
import pytest

from speechtrain.data.samplers import DynamicBucketSampler


def random_durations(count: int, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).uniform(0.5, 20.0, count).round(3).tolist()


def epoch_batches(sampler: DynamicBucketSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("max_batch_size", [None, 3])
def test_batches_cover_every_index_once_within_the_budget(max_batch_size):
    durations = random_durations(200)
    sampler = DynamicBucketSampler(durations, max_batch_seconds=60.0, max_batch_size=max_batch_size)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    for batch in batches:
        assert len(batch) * max(durations[i] for i in batch) <= 60.0
        assert max_batch_size is None or len(batch) <= max_batch_size


def test_bucketing_keeps_padding_low():
    durations = random_durations(500)
    batches = list(DynamicBucketSampler(durations, max_batch_seconds=80.0, num_buckets=10))
    audio = sum(durations)
    padded = sum(len(batch) * max(durations[i] for i in batch) for batch in batches)
    assert audio / padded > 0.85  # random batches of this corpus would be about 0.6


@pytest.mark.parametrize("count, num_replicas", [(200, 3), (37, 4), (5, 4), (3, 4), (0, 2)])
def test_ranks_get_disjoint_shards_of_equal_length(count, num_replicas):
    durations = random_durations(count, seed=count)
    samplers = [DynamicBucketSampler(durations, 40.0, num_replicas=num_replicas, rank=rank, seed=7)
                for rank in range(num_replicas)]
    for epoch in (0, 1):
        shards = [epoch_batches(sampler, epoch) for sampler in samplers]
        assert {len(shard) for shard in shards} == {len(samplers[0])}
        items = [i for shard in shards for batch in shard for i in batch]
        assert set(items) == set(range(count))
        if count >= num_replicas:
            assert len(items) == count  # disjoint: no item on two ranks, none repeated
        for shard in shards:
            assert all(len(batch) * max(durations[i] for i in batch) <= 40.0 for batch in shard)


def test_single_items_are_paired_only_within_the_budget():
    for duration, expected_batches in [(10.0, 4), (25.0, 8)]:  # 5 items of 25 s cannot pair under 40 s
        samplers = [DynamicBucketSampler([duration] * 5, 40.0, num_replicas=4, rank=r) for r in range(4)]
        shards = [list(sampler) for sampler in samplers]
        assert sum(len(shard) for shard in shards) == expected_batches
        assert all(len(batch) * duration <= 40.0 for shard in shards for batch in shard)
        assert {i for shard in shards for batch in shard for i in batch} == set(range(5))


def test_drop_last_gives_disjoint_equal_shards():
    durations = random_durations(37, seed=3)
    samplers = [DynamicBucketSampler(durations, 40.0, num_replicas=4, rank=rank, drop_last=True)
                for rank in range(4)]
    shards = [list(sampler) for sampler in samplers]
    assert len(samplers[0].batches) % 4 != 0  # so some batches really are dropped
    assert all(len(shard) == len(samplers[0].batches) // 4 == len(sampler) for shard, sampler in zip(shards, samplers))
    items = [i for shard in shards for batch in shard for i in batch]
    assert len(items) == len(set(items)) < 37


def test_order_is_deterministic_per_epoch_and_changes_across_epochs():
    durations = random_durations(300)
    first, second = (DynamicBucketSampler(durations, 50.0, seed=1) for _ in range(2))
    assert epoch_batches(first, 0) == epoch_batches(second, 0)
    assert epoch_batches(first, 1) == epoch_batches(second, 1)
    assert epoch_batches(first, 0) != epoch_batches(first, 1)
    assert sorted(map(tuple, epoch_batches(first, 0))) == sorted(map(tuple, epoch_batches(first, 1)))
    assert epoch_batches(DynamicBucketSampler(durations, 50.0, seed=2), 0) != epoch_batches(first, 0)


def test_without_shuffle_the_order_is_fixed():
    sampler = DynamicBucketSampler(random_durations(100), 50.0, shuffle=False)
    assert epoch_batches(sampler, 0) == epoch_batches(sampler, 5)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"utterance 1 lasts 31.00 s, more than max_batch_seconds=30"):
        DynamicBucketSampler([1.0, 31.0], 30.0)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        DynamicBucketSampler([1.0], 30.0, num_replicas=2, rank=2)


def test_items_padded_to_a_window_are_costed_at_the_window():
    """LibriSpeech-like 1.5-8 s clips for a model whose every input is a 30 s window: 600 s of budget hold 20 windows
    (by the clips' own lengths up to 400 items would fit), and buckets still group clips of like length."""
    durations = np.random.default_rng(0).uniform(1.5, 8.0, 2000).tolist()
    sampler = DynamicBucketSampler(durations, max_batch_seconds=600.0, min_item_seconds=30.0, num_buckets=10)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(2000))
    assert max(map(len, batches)) == 20
    spreads = [max(durations[i] for i in batch) - min(durations[i] for i in batch) for batch in batches]
    assert np.median(spreads) < 1.0  # within a bucket (6.5 s / 10), not across the whole range
    with pytest.raises(ValueError, match="cannot hold one item padded to min_item_seconds=30"):
        DynamicBucketSampler(durations, max_batch_seconds=20.0, min_item_seconds=30.0)
