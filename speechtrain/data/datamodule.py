"""Lightning data modules: corpora in, duration-bucketed batches out (ASR here; TTS in `speechtrain.data.tts`)."""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from speechtrain.data.collate import AsrCollator
from speechtrain.data.corpora import CorpusSpec, Utterance, read_corpus
from speechtrain.data.datasets import CheckedDataset, SpeechDataset
from speechtrain.data.samplers import DynamicBucketSampler
from speechtrain.errors import ConfigError, DataError
from speechtrain.models.feature_extraction import FeatureExtractor

logger = logging.getLogger(__name__)


def split_off(utterances: list[Utterance], fraction: float, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """A seeded random `fraction` of `utterances` (at least one) held out: returns (kept, held out), in order."""
    held_out_count = max(1, round(len(utterances) * fraction))
    if held_out_count >= len(utterances):
        raise ConfigError(
            f"data.val_fraction={fraction} of {len(utterances)} utterances leaves nothing to train on; "
            "lower val_fraction or give a separate val corpus"
        )
    held_out = set(np.random.default_rng(seed).permutation(len(utterances))[:held_out_count].tolist())
    kept = [u for i, u in enumerate(utterances) if i not in held_out]
    return kept, [u for i, u in enumerate(utterances) if i in held_out]


def _random_states() -> dict[str, Any]:
    """The generators' states in types that Lightning's `weights_only` checkpoint loading accepts. Of CUDA, only the
    rank's own device: the ranks of a run with another GPU count or layout restore what their device had."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            "cuda_device": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(states["python"])
    if not torch.cuda.is_available():
        return
    device_state = states.get("cuda_device")
    if device_state is None and states.get("cuda"):  # older checkpoints: every visible device's state
        device_state = states["cuda"][torch.cuda.current_device() % len(states["cuda"])]
    if device_state is not None:
        torch.cuda.set_rng_state(device_state)  # the current device only


class ResumableDataLoader(DataLoader):
    """A training DataLoader (over a `DynamicBucketSampler`) that a run killed mid-epoch resumes exactly.

    Lightning saves a loader's `state_dict` in each checkpoint and, resuming, calls `load_state_dict`
    before iterating; a plain DataLoader would restart the epoch from its first batch while Lightning's
    counters say it is half done. The state is the epoch, the number of batches handed to the training
    loop so far (Lightning does not prefetch from a loader with a length, so that is the number trained
    on) and every rank's random number generator states at that point, restored when the first resumed
    batch is drawn, so dropout, noise and random segments continue as in the uninterrupted run.

    Resumed with another number of ranks (8 GPUs, then 4), the saved position does not map onto the new sharding:
    the epoch's data order starts again from its first batch (not a rescaled skip count), and each rank restores
    the random states of rank `rank % saved ranks`, with a warning that the run does not continue exactly.
    """

    batch_sampler: DynamicBucketSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = 0
        self._random_states_to_restore: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        """Batches of the sampler's current epoch; the generator body runs at the first `next()`, after Lightning's
        `set_epoch`. The DataLoader's own iterator draws a worker base seed from torch's generator when created,
        which an uninterrupted run does before an epoch's first batch: the saved states (taken after
        `batches_done` batches) are restored after creating it when resuming mid-epoch, before it otherwise."""
        sampler = self.batch_sampler
        resume = sampler._resume_at
        self.batches_done = resume[1] if resume is not None and resume[0] == sampler.epoch else 0
        states, self._random_states_to_restore = self._random_states_to_restore, None
        if states is not None and self.batches_done == 0:
            _set_random_states(states)
        iterator = super().__iter__()
        if states is not None and self.batches_done > 0:
            _set_random_states(states)
        for batch in iterator:
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank when a checkpoint is saved (rank 0's is written): all ranks' random states."""
        states = _random_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        return {"epoch": self.batch_sampler.epoch, "batches_done": self.batches_done, "random_states": gathered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        random_states = state["random_states"]
        self._random_states_to_restore = random_states[rank % len(random_states)]
        if len(random_states) != self.batch_sampler.num_replicas:
            logger.warning("the checkpoint was saved by %d ranks, this run has %d: epoch %d's data order starts "
                           "again from its first batch (the %d batches done per rank do not map onto %d ranks), "
                           "and dropout and noise do not continue as before", len(random_states),
                           self.batch_sampler.num_replicas, state["epoch"], state["batches_done"],
                           self.batch_sampler.num_replicas)
            return
        if state["batches_done"] < len(self.batch_sampler):
            self.batch_sampler.resume_at(state["epoch"], state["batches_done"])


class BucketedDataModule(L.LightningDataModule, ABC):
    """Length-bucketed loaders whose training loader resumes mid-epoch; the speech and token data modules share it.

    Subclasses set `collator` in `__init__` and `train_dataset` and `val_dataset` in `setup`, and build a split's
    loader in `_loader` with `_bucketed_loader`. `has_val` says whether a separate validation set (`val_name`
    in the error) was given, which excludes holding out `val_fraction` of the training set.
    """

    def __init__(
        self, max_batch_seconds: float, val_fraction: float, has_val: bool, val_name: str,
        max_batch_size: int | None, num_buckets: int, num_workers: int, seed: int,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if has_val and val_fraction > 0:
            raise ConfigError(f"give either {val_name} or data.val_fraction={val_fraction}, not both; "
                              "set one to null/0")
        self.max_batch_seconds = max_batch_seconds
        self.val_fraction = val_fraction
        self.max_batch_size = max_batch_size
        self.min_item_seconds: float | None = None  # a subclass whose items are padded to a fixed window sets it
        self.num_buckets = num_buckets
        self.num_workers = num_workers
        self.seed = seed
        self.collator: Callable | None = None
        self.train_dataset: Any = None
        self.val_dataset: Any = None
        self.test_dataset: Any = None  # a held-out test split, scored once after training (`data.test`)
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None

    @abstractmethod
    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        """The loader of one split (`shuffle` for training)."""

    def _bucketed_loader(self, dataset: Any, durations: Sequence[float], shuffle: bool,
                         collator: Callable | None = None) -> DataLoader:
        """`collator` replaces `self.collator` for this loader (a validation variant of it)."""
        sampler = DynamicBucketSampler(
            durations, self.max_batch_seconds, num_buckets=self.num_buckets, shuffle=shuffle,
            seed=self.seed, max_batch_size=self.max_batch_size, min_item_seconds=self.min_item_seconds,
        )
        loader_class = ResumableDataLoader if shuffle else DataLoader  # only training resumes mid-epoch
        return loader_class(
            dataset, batch_sampler=sampler, collate_fn=self.collator if collator is None else collator,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup() before train_dataloader()")
        self._train_loader = self._loader(self.train_dataset, shuffle=True)
        if self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)
        return self._train_loader

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader in a fixed order, or an empty list (no validation) without a val split."""
        if self.train_dataset is None:
            raise RuntimeError("call setup() before val_dataloader()")
        return [] if self.val_dataset is None else self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        """The test loader in a fixed order, or an empty list without a test split."""
        if self.train_dataset is None:
            raise RuntimeError("call setup() before test_dataloader()")
        return [] if self.test_dataset is None else self._loader(self.test_dataset, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position and random states. Lightning saves a stateful loader's state itself
        but restores it only into a loader built after the restore; a task that reads
        `trainer.estimated_stepping_batches` (the ASR schedule) makes Lightning build it before, so the data
        module carries the state too and hands it to whichever loader it builds or has built."""
        return {} if self._train_loader is None else {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._train_loader_state = state.get("train_loader")
        if self._train_loader is not None and self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)


class SpeechDataModule(BucketedDataModule):
    """What the ASR and TTS data modules share: corpora in, checked datasets, duration-bucketed batches out.

    `train`/`val`/`test` are `CorpusSpec`s or their fields as a dict (as Hydra passes them); relative paths
    are resolved against the current directory. A `test` corpus is scored once, after training. Without `val`,
    `val_fraction` > 0 holds out a seeded random part of train. Batches come from `DynamicBucketSampler` as the
    loader's `batch_sampler` (at most `max_batch_seconds` of padded audio, `max_batch_size` items), sharded across
    DDP ranks by the sampler itself: create the Trainer with `use_distributed_sampler=False`. Lightning calls the
    sampler's `set_epoch` at each epoch start, so every epoch has a new batch order.

    Subclasses set `self.collator` and build a split's dataset in `_dataset`; `_prepare` sees the
    training utterances first (the TTS module maps its speakers there).
    """

    def __init__(
        self,
        train: CorpusSpec | Mapping,
        val: CorpusSpec | Mapping | None,
        max_batch_seconds: float,
        max_duration: float,
        num_workers: int = 0,
        strict: bool = False,
        val_fraction: float = 0.0,
        seed: int = 0,
        num_buckets: int = 10,
        max_batch_size: int | None = None,
        test: CorpusSpec | Mapping | None = None,
    ):
        super().__init__(max_batch_seconds, val_fraction, val is not None, "a val corpus", max_batch_size, num_buckets,
                         num_workers, seed)
        if max_duration > max_batch_seconds:
            raise ConfigError(
                f"data.max_batch_seconds={max_batch_seconds} cannot hold one utterance of data.max_duration="
                f"{max_duration} s; raise data.max_batch_seconds or lower data.max_duration"
            )
        self.train_spec = CorpusSpec.coerce(train)
        self.val_spec = None if val is None else CorpusSpec.coerce(val)
        self.test_spec = None if test is None else CorpusSpec.coerce(test)
        self.max_duration = max_duration
        self.strict = strict

    def setup(self, stage: str | None = None) -> None:
        """Reads and checks the corpora once (every rank does the same, deterministically)."""
        if self.train_dataset is not None:
            return
        train = read_corpus(self.train_spec)
        val = read_corpus(self.val_spec) if self.val_spec is not None else []
        if self.val_fraction > 0:
            train, val = split_off(train, self.val_fraction, self.seed)
        self._prepare(train)
        self.train_dataset = self._dataset(train, "train")
        if len(self.train_dataset) == 0:
            raise DataError(
                f"no usable training utterances in {self.train_spec.path} ({len(train)} read, all skipped; "
                "the warning above says why)"
            )
        self.val_dataset = self._dataset(val, "val") if val else None
        test = read_corpus(self.test_spec) if self.test_spec is not None else []
        self.test_dataset = self._dataset(test, "test") if test else None
        logger.info(
            "train: %d utterances, %.1f h; val: %d utterances; test: %d utterances", len(self.train_dataset),
            sum(self.train_dataset.durations) / 3600, len(self.val_dataset) if self.val_dataset else 0,
            len(self.test_dataset) if self.test_dataset else 0,
        )

    def _prepare(self, train: list[Utterance]) -> None:
        """Runs once on the training utterances before any dataset is built."""

    @abstractmethod
    def _dataset(self, utterances: list[Utterance], name: str) -> CheckedDataset:
        """The task's dataset over `utterances` (checked at construction)."""

    def _loader(self, dataset: CheckedDataset, shuffle: bool) -> DataLoader:
        return self._bucketed_loader(dataset, dataset.durations, shuffle)


class AsrDataModule(SpeechDataModule):
    """Reads the train (and val) corpora, checks every utterance and serves `AsrCollator` batches.

    Corpora, validation split and batching are `SpeechDataModule`'s. Utterances longer than
    `max_duration` seconds, shorter than the feature extractor's `min_samples` (Speech2Text's one
    25 ms frame) or with more than `max_label_tokens` decoder labels are dropped with one summary
    warning per split (`strict=True` raises on the first instead).

    A feature extractor with a `chunk_length` pads every waveform to that many seconds (Whisper's
    window), so the encoder's cost is per item, not per second of audio: the sampler then costs each
    item at `chunk_length` seconds, and `max_duration=None` means the window itself.
    """

    def __init__(
        self,
        train: CorpusSpec | Mapping,
        val: CorpusSpec | Mapping | None,
        tokenizer: Any,
        feature_extractor: FeatureExtractor,
        max_batch_seconds: float,
        max_duration: float | None,
        max_label_tokens: int,
        num_workers: int = 0,
        strict: bool = False,
        val_fraction: float = 0.0,
        seed: int = 0,
        num_buckets: int = 10,
        max_batch_size: int | None = None,
        test: CorpusSpec | Mapping | None = None,
        timestamp_probability: float = 0.0,
    ):
        chunk_length = getattr(feature_extractor, "chunk_length", None)
        if max_duration is None:
            if chunk_length is None:
                raise ConfigError(f"data.max_duration is null, which means the feature extractor's window, but "
                                  f"{type(feature_extractor).__name__} has none; set data.max_duration in seconds")
            max_duration = float(chunk_length)
        if chunk_length is not None and max_duration > chunk_length:
            raise ConfigError(
                f"data.max_duration={max_duration} s is longer than the feature extractor's {chunk_length} s chunk; "
                f"set data.max_duration <= {chunk_length} (or null for the window)"
            )
        super().__init__(
            train, val, max_batch_seconds, max_duration, num_workers=num_workers, strict=strict,
            val_fraction=val_fraction, seed=seed, num_buckets=num_buckets, max_batch_size=max_batch_size, test=test,
        )
        if chunk_length is not None and chunk_length > max_batch_seconds:
            raise ConfigError(f"data.max_batch_seconds={max_batch_seconds} cannot hold one {chunk_length} s chunk of "
                              "the feature extractor (every item is padded to it); raise data.max_batch_seconds")
        self.min_item_seconds = None if chunk_length is None else float(chunk_length)
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.max_label_tokens = max_label_tokens
        self.timestamp_probability = timestamp_probability
        self.collator = AsrCollator(feature_extractor, tokenizer)

    def _dataset(self, utterances: list[Utterance], name: str) -> SpeechDataset:
        return SpeechDataset(
            utterances, self.feature_extractor.sampling_rate, self.tokenizer, self.max_duration,
            self.max_label_tokens, strict=self.strict, name=name,
            min_samples=self.feature_extractor.min_samples,
            timestamp_probability=self.timestamp_probability if name == "train" else 0.0,
        )
