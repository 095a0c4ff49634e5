"""Batches of similar-length utterances packed to a budget of padded seconds, sharded across ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from speechtrain.errors import ConfigError


class DynamicBucketSampler(Sampler[list[int]]):
    """A batch sampler (`DataLoader(batch_sampler=...)`) whose batches cost at most `max_batch_seconds`.

    Utterances are sorted by duration and cut into `num_buckets` buckets of equal count; with
    `shuffle` each bucket is shuffled (by `seed`) before packing, so neighbours vary while lengths
    stay alike. A batch's cost is its padded length, `batch_size * longest duration`, and packing
    closes a batch before that exceeds `max_batch_seconds` (or `max_batch_size` items). A model that
    pads every input to a fixed window (Whisper's 30 s) computes on the window, not on the audio:
    `min_item_seconds` costs each item at least that long, so the budget counts windows.

    Batches are packed once and their order is shuffled every epoch from `seed + epoch`
    (`set_epoch`, which Lightning calls through the `sampler` attribute). Packing once keeps
    `len()` fixed across epochs, which learning-rate schedules and Lightning's epoch bookkeeping
    rely on.

    Under DDP (`num_replicas`/`rank` given, or read from an initialised `torch.distributed`) rank r
    takes every `num_replicas`-th batch, so all ranks get the same number of batches and no item is
    seen twice: instead of repeating batches as `DistributedSampler` does, the largest batches are
    split (or single items paired) until the count divides evenly; batches are repeated only when
    that cannot work, e.g. with fewer items than ranks. `drop_last=True` drops the remainder batches
    of each epoch instead.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        max_batch_size: int | None = None,
        min_item_seconds: float | None = None,
    ):
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas}) for num_replicas={num_replicas}")
        if max_batch_seconds <= 0:
            raise ConfigError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if min_item_seconds is not None and min_item_seconds > max_batch_seconds:
            raise ConfigError(f"max_batch_seconds={max_batch_seconds} cannot hold one item padded to "
                             f"min_item_seconds={min_item_seconds}; raise max_batch_seconds")
        durations = np.asarray(durations, dtype=np.float64)
        if len(durations) and durations.max() > max_batch_seconds:
            longest = int(durations.argmax())
            raise ConfigError(
                f"utterance {longest} lasts {durations[longest]:.2f} s, more than max_batch_seconds="
                f"{max_batch_seconds}; raise max_batch_seconds or lower max_duration"
            )
        self.max_batch_seconds = max_batch_seconds
        self.num_buckets = num_buckets
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_batch_size = max_batch_size
        self.min_item_seconds = min_item_seconds
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None
        # what each item costs in the budget; buckets still follow the real durations
        costs = durations if min_item_seconds is None else np.maximum(durations, min_item_seconds)
        self.batches = self._pack(durations, costs)
        if not drop_last:
            self.batches = self._balance_across_ranks(self.batches, costs)

    @property
    def sampler(self) -> DynamicBucketSampler:
        """Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`; pointing it here gets the call."""
        return self

    def _pack(self, durations: np.ndarray, costs: np.ndarray) -> list[list[int]]:
        order = np.argsort(durations, kind="stable")
        rng = np.random.default_rng(self.seed)
        batches = []
        for bucket in np.array_split(order, max(1, min(self.num_buckets, len(order)))):
            if self.shuffle:
                bucket = rng.permutation(bucket)
            batch, longest = [], 0.0
            for index in bucket.tolist():
                cost = (len(batch) + 1) * max(longest, costs[index])
                if batch and (cost > self.max_batch_seconds or len(batch) == self.max_batch_size):
                    batches.append(batch)
                    batch, longest = [], 0.0
                batch.append(index)
                longest = max(longest, costs[index])
            if batch:
                batches.append(batch)
        return batches

    def _balance_across_ranks(self, batches: list[list[int]], costs: np.ndarray) -> list[list[int]]:
        """Makes `num_replicas` divide the batch count without repeating items: halves the largest batches
        (which never raises a cost) or, when all are single items, pairs the shortest where the budget
        allows. Only when neither works (e.g. fewer items than ranks) are batches repeated from the start."""
        replicas, batches = self.num_replicas, list(batches)
        while len(batches) % replicas and max(map(len, batches)) > 1:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = sorted(batches.pop(largest), key=lambda i: costs[i])
            batches += [batch[::2], batch[1::2]]
        merges = len(batches) % replicas
        if merges and len(batches) > replicas and self.max_batch_size != 1:
            singles = sorted(batches, key=lambda batch: costs[batch[0]])  # every batch holds one item here
            if 2 * costs[singles[2 * merges - 1][0]] <= self.max_batch_seconds:
                batches = [singles[2 * k] + singles[2 * k + 1] for k in range(merges)] + singles[2 * merges :]
        return batches + [batches[i % len(batches)] for i in range(-len(batches) % replicas)]

    def set_epoch(self, epoch: int) -> None:
        """Selects the batch order of `epoch` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Makes the next pass over `epoch` skip its first `batches_done` batches (of this rank), as a run
        resumed mid-epoch needs; a pass over any other epoch is whole. Selects `epoch` too."""
        if not 0 <= batches_done <= len(self):
            raise ValueError(f"batches_done={batches_done} is outside [0, {len(self)}] for this sampler")
        self.epoch = epoch
        self._resume_at = (epoch, batches_done)

    def __len__(self) -> int:
        return len(self.batches) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.batches), generator=generator).tolist()
        usable = len(self) * self.num_replicas  # drops the remainder when drop_last left one
        skip = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == self.epoch else 0
        self._resume_at = None
        for position in range(self.rank + skip * self.num_replicas, usable, self.num_replicas):
            yield self.batches[order[position]]
