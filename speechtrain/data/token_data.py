"""Batches of codec tokens for SoundStorm and Bark: tokens folders in, padded id tensors out.

The folders come from `speechtrain.data.token_shards.tokenize_corpus`; no audio is read here.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from speechtrain.data.datamodule import BucketedDataModule, split_off
from speechtrain.data.token_shards import KMEANS_FILE, TokenizedUtterance, read_token_info, read_token_shards
from speechtrain.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class TokenDataset(Dataset):
    """`dataset[i]` is the `TokenizedUtterance` itself (id, text, speaker, duration, acoustic [frames, levels] and
    semantic [semantic_frames], int16 as read from shards); the collator shapes batches (long ids).
    `durations[i]` is its length in seconds, for `DynamicBucketSampler`."""

    def __init__(self, utterances: Sequence[TokenizedUtterance]):
        self.utterances = list(utterances)
        self.durations = [u.duration for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> TokenizedUtterance:
        return self.utterances[index]


def pad_stack(sequences: Sequence[torch.Tensor], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads [time, ...] tensors with 0 to a common length: (padded [batch, time, ...], mask [batch, time])."""
    length = max((len(s) for s in sequences), default=0) if length is None else length
    first = sequences[0]
    padded = first.new_zeros((len(sequences), length, *first.shape[1:]))
    mask = torch.zeros(len(sequences), length, dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = True
    return padded, mask


def frame_ratio(semantic_rate: float, acoustic_rate: float) -> Fraction:
    """Semantic frames per codec frame as an exact fraction (2/3 for HuBERT's 50 Hz over EnCodec's 75 Hz)."""
    return Fraction(semantic_rate).limit_denominator(1000) / Fraction(acoustic_rate).limit_denominator(1000)


def utterance_generator(utterance_id: str, seed: int = 0) -> torch.Generator:
    """A generator seeded from an utterance's id: the same draws for it in every pass, whatever the batch."""
    return torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(utterance_id.encode()))


class SoundStormCollator:
    """Pads a list of `TokenizedUtterance`s into a SoundStorm batch, optionally cropped in time.

    With `max_frames`, an utterance longer than that is cut to a window of `max_frames` acoustic frames starting at
    frame t, and to the semantic frames that these read, [t * r, floor((t + max_frames - 1) * r)] with
    r = `semantic_rate / acoustic_rate`. t is a multiple of r's denominator (3 codec frames, exactly 2 semantic
    frames, at 75 and 50 Hz), so every codec frame of a crop reads the semantic frame it reads uncropped
    (`models.soundstorm.modeling.semantic_frame_indices`). Training crops draw t from torch's global generator
    (seeded per DataLoader worker); with `fixed_crops` (`for_validation`) each utterance always gets the same one.

    Returns a dict:
        codes:         LongTensor [batch, frames, levels], EnCodec codes, padding 0
        frame_mask:    BoolTensor [batch, frames], True on real frames
        semantic_ids:  LongTensor [batch, semantic_frames], k-means ids, padding 0
        semantic_mask: BoolTensor [batch, semantic_frames], True on real semantic frames
        ids:           list[str] utterance ids
        texts:         list[str] transcripts
        audio_seconds: float, the unpadded audio the batch stands for (for throughput logging)
    """

    def __init__(self, max_frames: int | None = None, acoustic_rate: float = 75.0, semantic_rate: float = 50.0,
                 fixed_crops: bool = False):
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be at least 1 or None, got {max_frames}")
        if acoustic_rate <= 0 or semantic_rate <= 0:
            raise ConfigError(f"frame rates must be positive, got acoustic {acoustic_rate}, semantic {semantic_rate}")
        self.max_frames = max_frames
        self.acoustic_rate = acoustic_rate
        self.semantic_rate = semantic_rate
        self.fixed_crops = fixed_crops
        self.ratio = frame_ratio(semantic_rate, acoustic_rate)

    @property
    def max_seconds(self) -> float | None:
        """The longest audio a batch item stands for, so the data module packs cropped items by their cropped length."""
        return None if self.max_frames is None else self.max_frames / self.acoustic_rate

    def for_validation(self) -> SoundStormCollator:
        """The same collator with fixed crops, so that every validation pass scores the same frames."""
        return SoundStormCollator(self.max_frames, self.acoustic_rate, self.semantic_rate, fixed_crops=True)

    def crop(self, utterance: TokenizedUtterance) -> tuple[torch.Tensor, torch.Tensor]:
        """(acoustic [frames <= max_frames, levels], semantic [the same span]) of one utterance."""
        acoustic, semantic = utterance.acoustic, utterance.semantic
        if self.max_frames is None or len(acoustic) <= self.max_frames:
            return acoustic, semantic
        step = self.ratio.denominator  # codec frames that hold a whole number of semantic frames
        generator = utterance_generator(utterance.id) if self.fixed_crops else None
        start = step * int(torch.randint((len(acoustic) - self.max_frames) // step + 1, (), generator=generator))
        semantic_end = math.floor((start + self.max_frames - 1) * self.ratio) + 1
        # a crop past the last semantic frame (HuBERT gives a frame or two fewer) reads that frame, as uncropped
        semantic_start = min(int(start * self.ratio), max(len(semantic) - 1, 0))
        return acoustic[start : start + self.max_frames], semantic[semantic_start:semantic_end]

    def __call__(self, utterances: list[TokenizedUtterance]) -> dict:
        if not utterances:
            raise ValueError("SoundStormCollator got an empty batch")
        acoustic, semantic = zip(*(self.crop(u) for u in utterances))
        codes, frame_mask = pad_stack(acoustic)
        semantic_ids, semantic_mask = pad_stack(semantic)
        return {"codes": codes.long(), "frame_mask": frame_mask, "semantic_ids": semantic_ids.long(),
                "semantic_mask": semantic_mask, "ids": [u.id for u in utterances],
                "texts": [u.text for u in utterances], "audio_seconds": float(frame_mask.sum()) / self.acoustic_rate}


class TokenDataModule(BucketedDataModule):
    """Tokens folders in, duration-bucketed batches of an injected collator out (SoundStorm's, Bark's).

    `tokens_dir` is a folder written by `speechtrain-tokenize`; `val_dir` another one (same codec
    and semantic settings) or, without it, `val_fraction` of `tokens_dir` held out (seeded; 0 = no
    validation). Batches come from `DynamicBucketSampler` (at most `max_batch_seconds` of padded
    audio, `max_batch_size` items), which shards them across DDP ranks itself: create the Trainer
    with `use_distributed_sampler=False`. A collator with a `max_seconds` attribute (a crop) has
    its items packed by their cropped length. After `setup`, `token_info` is the tokens.json dict
    (frame rates, codebook sizes, k-means clusters) for tasks and recipes.
    """

    def __init__(
        self,
        tokens_dir: str | Path,
        collator: Callable[[list[TokenizedUtterance]], dict],
        max_batch_seconds: float,
        val_fraction: float = 0.1,
        val_dir: str | Path | None = None,
        max_batch_size: int | None = None,
        num_buckets: int = 10,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(max_batch_seconds, val_fraction, val_dir is not None, "val_dir", max_batch_size, num_buckets,
                         num_workers, seed)
        self.tokens_dir = Path(tokens_dir)
        self.val_dir = None if val_dir is None else Path(val_dir)
        self.collator = collator
        self.token_info: dict | None = None

    def _check_collator_rates(self) -> None:
        """A collator that states frame rates must state this folder's (a crop would misalign otherwise)."""
        rates = {"acoustic_rate": self.token_info["codec"]["frame_rate"],
                 "semantic_rate": self.token_info["semantic"]["frame_rate"]}
        for name, rate in rates.items():
            stated = getattr(self.collator, name, None)
            if stated is not None and not math.isclose(stated, rate):
                raise ConfigError(f"the collator's {name}={stated} differs from {self.tokens_dir}'s {rate} "
                                 "(tokens.json); set it to match")

    def setup(self, stage: str | None = None) -> None:
        """Reads the tokens once (every rank does the same, deterministically)."""
        if self.train_dataset is not None:
            return
        self.token_info = read_token_info(self.tokens_dir)
        self._check_collator_rates()
        train = read_token_shards(self.tokens_dir)
        val = []
        if self.val_dir is not None:
            val_info = read_token_info(self.val_dir)
            for key in ("codec", "semantic"):
                if val_info[key] != self.token_info[key]:
                    raise DataError(f"{self.val_dir} was tokenized with other {key} settings than {self.tokens_dir} "
                                     f"({val_info[key]} vs {self.token_info[key]}); tokenize both the same way")
            if (self.token_info["semantic"].get("kmeans") is not None
                    and (self.val_dir / KMEANS_FILE).read_bytes() != (self.tokens_dir / KMEANS_FILE).read_bytes()):
                raise DataError(f"{self.val_dir} and {self.tokens_dir} hold different k-means, so their semantic ids "
                                 f"differ; tokenize the val corpus with --kmeans {self.tokens_dir / KMEANS_FILE}")
            val = read_token_shards(self.val_dir)
        elif self.val_fraction > 0:
            train, val = split_off(train, self.val_fraction, self.seed)
        if not train:
            raise DataError(f"{self.tokens_dir} holds no utterances to train on")
        self.train_dataset = TokenDataset(train)
        self.val_dataset = TokenDataset(val) if val else None
        logger.info("train: %d utterances, %.1f h; val: %d utterances", len(train),
                    sum(self.train_dataset.durations) / 3600, len(val))

    def _loader(self, dataset: TokenDataset, shuffle: bool) -> DataLoader:
        """Training draws its crops at random; validation and test use the collator's `for_validation()` (fixed
        crops), when it has one."""
        max_seconds = getattr(self.collator, "max_seconds", None)
        durations = dataset.durations if max_seconds is None else [min(d, max_seconds) for d in dataset.durations]
        collator = self.collator if shuffle or not hasattr(self.collator, "for_validation") \
            else self.collator.for_validation()
        return self._bucketed_loader(dataset, durations, shuffle, collator)
