"""A checked speech-text dataset: bad utterances are found before training, not in the middle of it."""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from speechtrain.data.audio import AudioError, audio_info, load_audio
from speechtrain.data.corpora import Utterance
from speechtrain.errors import DataError

logger = logging.getLogger(__name__)

PROGRESS_MIN_ITEMS = 1000  # show a progress bar when checking at least this many utterances
CHECK_CHUNK = 4096  # utterances handed to the thread pool at once, to bound pending futures


class TextTokenizer(Protocol):
    """The part of the ASR tokenizer (docs/design.md) that a dataset needs."""

    prefix_ids: Sequence[int]

    def encode(self, text: str) -> list[int]: ...


def _is_first_rank() -> bool:
    """True outside distributed runs and on rank 0: progress bars and summaries are shown once, not per rank."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _chunked_map(function: Callable, items: Iterable, workers: int) -> Iterator:
    """`map` over a thread pool (header reads wait on the disk), in order, a chunk at a time."""
    items = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        while chunk := list(islice(items, CHECK_CHUNK)):
            yield from pool.map(function, chunk)


Problem = tuple[str, str]  # (reason, detail): a reason counts skipped utterances, the detail names one example


class CheckedDataset(Dataset, ABC):
    """Utterances checked once at construction (in a thread pool), loaded at `sample_rate` on access.

    Subclasses say what makes an utterance usable (`_check`, which may use `_check_audio`) and what an
    item holds (`__getitem__`, which loads through `_load_audio`). Construction keeps the usable
    utterances with their durations and the token ids the check computed (in one int32 array, so
    they are neither recomputed per access nor copied per item into DataLoader workers), counts the
    others by reason in `skipped` and logs one summary warning; with `strict=True` the first bad
    utterance raises a `ValueError` naming its file instead.

    `durations[i]` is utterance i's length in seconds, for `DynamicBucketSampler`.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        sample_rate: int,
        max_duration: float,
        strict: bool = False,
        name: str = "dataset",
        num_threads: int = 8,
    ):
        self.sample_rate = sample_rate
        self.max_duration = max_duration
        self.strict = strict
        self.name = name
        self.max_samples = math.ceil(max_duration * sample_rate)
        self.skipped_at_load = 0
        self.skipped: dict[str, int] = {}
        self.utterances: list[Utterance] = []
        self.durations: list[float] = []

        examples: dict[str, str] = {}
        kept_token_ids: list[np.ndarray] = []
        checks = _chunked_map(self._check, utterances, num_threads)
        progress = tqdm(
            checks, total=len(utterances), desc=f"checking {name}", unit="utt",
            disable=len(utterances) < PROGRESS_MIN_ITEMS or not _is_first_rank(),
        )
        for (duration, problem, token_ids), utterance in zip(progress, utterances):
            if problem is None:
                self.utterances.append(utterance)
                self.durations.append(duration)
                kept_token_ids.append(np.asarray(token_ids, dtype=np.int32))
                continue
            reason, detail = problem
            if strict:
                raise DataError(f"{utterance.audio_path}: {reason} ({detail}) in {name}; fix or remove it, "
                                 "or set strict=False to skip bad utterances")
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            examples.setdefault(reason, f"{utterance.audio_path}: {detail}")
        self._token_ids = np.concatenate(kept_token_ids) if kept_token_ids else np.zeros(0, dtype=np.int32)
        self._token_offsets = np.cumsum([0] + [len(ids) for ids in kept_token_ids])
        if self.skipped and _is_first_rank():
            summary = ", ".join(f"{reason}: {n} (e.g. {examples[reason]})" for reason, n in self.skipped.items())
            logger.warning("%s: skipped %d of %d utterances: %s", name, sum(self.skipped.values()),
                           len(utterances), summary)

    @abstractmethod
    def _check(self, utterance: Utterance) -> tuple[float, Problem | None, list[int]]:
        """(duration, None, token ids) for a usable utterance, else (nan, problem, []); runs in worker threads."""

    def _check_audio(self, utterance: Utterance) -> tuple[float, Problem | None]:
        """(duration, None) when the audio file is present, readable, not empty and at most `max_duration` long."""
        duration = utterance.duration
        if utterance.audio_bytes is None and not Path(utterance.audio_path).is_file():
            return math.nan, ("missing file", "file not found")
        if duration is None:
            try:
                duration = audio_info(self._source(utterance), name=utterance.audio_path).duration
            except AudioError as err:
                return math.nan, ("unreadable audio", err.reason)
        if duration <= 0:
            return math.nan, ("empty audio", f"stated duration {duration} s")
        if duration > self.max_duration:
            return math.nan, (f"longer than {self.max_duration} s", f"{duration:.2f} s")
        return duration, None

    @staticmethod
    def _source(utterance: Utterance) -> str | bytes:
        return utterance.audio_bytes if utterance.audio_bytes is not None else utterance.audio_path

    def token_ids(self, index: int) -> list[int]:
        """The token ids the check computed for utterance `index`."""
        return self._token_ids[self._token_offsets[index] : self._token_offsets[index + 1]].tolist()

    def _load_audio(self, index: int, min_samples: int = 1) -> torch.Tensor | None:
        """Utterance `index`'s audio [samples], or None (logged, counted in `skipped_at_load` per worker process)
        when it no longer loads or its length contradicts what the check was told; `strict` raises instead."""
        utterance = self.utterances[index]
        try:
            audio = load_audio(self._source(utterance), self.sample_rate, name=utterance.audio_path)
            if audio.numel() > self.max_samples:
                raise AudioError(utterance.audio_path, f"{audio.numel() / self.sample_rate:.2f} s once loaded, "
                                 f"longer than max_duration={self.max_duration} s (the corpus stated otherwise)")
            if audio.numel() < min_samples:
                raise AudioError(utterance.audio_path, f"{audio.numel()} samples once loaded, fewer than the "
                                 f"{min_samples} this utterance needs (the corpus stated a longer duration)")
        except AudioError as err:
            if self.strict:
                raise
            self.skipped_at_load += 1
            logger.warning("%s: skipping an utterance that no longer loads: %s", self.name, err)
            return None
        return audio

    def __len__(self) -> int:
        return len(self.utterances)


class SpeechDataset(CheckedDataset):
    """Transcribed speech for ASR, checked once at construction.

    Construction drops (and counts by reason in `skipped`) every utterance with a missing or
    unreadable audio file, an empty transcript, audio longer than `max_duration` seconds or shorter
    than `min_samples` at `sample_rate` (the feature extractor's shortest input), or more than
    `max_label_tokens` decoder labels (`len(prefix_ids) + len(text ids) + 1` for the end
    token); one warning summarises what was dropped. With `strict=True` the first bad utterance
    raises a `ValueError` naming its file instead.

    `dataset[i]` is a dict:
        id:        str
        audio:     float32 Tensor [samples], mono at `sample_rate` (channels averaged, resampled)
        text:      str, the transcript stripped of surrounding whitespace
        token_ids: list[int], `tokenizer.encode(text)` (no prefix, no end token; the collator adds them)
        prefix_ids: list[int], the decoder prompt: the tokenizer's, or its prompt for the utterance's `language`
        prompt_ids: list[int], `tokenizer.prompt_ids(prompt)` for an utterance with a `prompt` (Whisper's
                   `<|startofprev|>` + tokens, not scored), else empty
    An utterance with `segments` is, with probability `timestamp_probability` at each load, served with Whisper's
    timestamp tokens instead: `token_ids` = `<|start|> text <|end|>` per segment, `prefix_ids` without
    `<|notimestamps|>`; the rest of the time as plain text, so that the model keeps both modes.
    or None when the audio cannot be loaded any more (deleted or corrupted after the check, or longer
    than stated): that is logged, counted in `skipped_at_load` (per worker process) and the collator
    drops it, so one bad file never stops an epoch. With `strict=True` it raises instead.

    `durations[i]` is utterance i's length in seconds, for `DynamicBucketSampler`.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        sample_rate: int,
        tokenizer: TextTokenizer,
        max_duration: float,
        max_label_tokens: int,
        strict: bool = False,
        name: str = "dataset",
        num_threads: int = 8,
        min_samples: int = 1,
        timestamp_probability: float = 0.0,
    ):
        if not 0.0 <= timestamp_probability <= 1.0:
            raise ValueError(f"timestamp_probability={timestamp_probability}: expected a probability in [0, 1]")
        self.timestamp_probability = timestamp_probability
        self.tokenizer = tokenizer
        self.max_label_tokens = max_label_tokens
        self.min_samples = min_samples
        super().__init__(utterances, sample_rate, max_duration, strict=strict, name=name, num_threads=num_threads)

    def _check(self, utterance: Utterance) -> tuple[float, Problem | None, list[int]]:
        """Cheapest checks first: the transcript, then the audio header."""
        if not utterance.text.strip():
            return math.nan, ("empty transcript", f"id {utterance.id}"), []
        token_ids = self.tokenizer.encode(utterance.text.strip())
        try:
            prompt_ids, prefix_ids = self.decoder_context(utterance)
            if self._uses_timestamps(utterance):
                token_ids_timed = self.tokenizer.timestamped_ids(utterance.segments)
            else:
                token_ids_timed = token_ids
        except ValueError as error:
            return math.nan, ("unusable prompt, language or segments", f"id {utterance.id}: {error}"), []
        num_labels = len(prompt_ids) + len(prefix_ids) + max(len(token_ids), len(token_ids_timed)) + 1
        if num_labels > self.max_label_tokens:
            return math.nan, (f"more than {self.max_label_tokens} label tokens", f"{num_labels} tokens"), []
        duration, problem = self._check_audio(utterance)
        if problem is None and math.floor(duration * self.sample_rate + 1e-6) < self.min_samples:
            shortest = f"{1000 * self.min_samples / self.sample_rate:g} ms"
            return math.nan, (f"shorter than {shortest}", f"{duration * 1000:.1f} ms, fewer than the "
                              f"{self.min_samples} samples the features need"), []
        return duration, problem, token_ids

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        audio = self._load_audio(index, min_samples=self.min_samples)
        if audio is None:
            return None
        utterance = self.utterances[index]
        prompt_ids, prefix_ids = self.decoder_context(utterance)
        token_ids = self.token_ids(index)
        if self._uses_timestamps(utterance) and float(torch.rand(())) < self.timestamp_probability:
            token_ids = self.tokenizer.timestamped_ids(utterance.segments)
            prefix_ids = self.tokenizer.prefix_for(utterance.language, timestamps=True)
        return {"id": utterance.id, "audio": audio, "text": utterance.text.strip(), "token_ids": token_ids,
                "prefix_ids": prefix_ids, "prompt_ids": prompt_ids}

    def _uses_timestamps(self, utterance: Utterance) -> bool:
        if not utterance.segments or self.timestamp_probability == 0:
            return False
        if not hasattr(self.tokenizer, "timestamped_ids"):
            raise ValueError(f"{type(self.tokenizer).__name__} has no timestamp tokens (Whisper's has)")
        return True

    def decoder_context(self, utterance: Utterance) -> tuple[list[int], list[int]]:
        """(prompt ids, decoder prefix) of `utterance`: its `prompt` and `language` where it has them. Raises a
        ValueError when the tokenizer cannot use them (no prompt token, a language it does not know)."""
        prompt_ids, prefix_ids = [], list(self.tokenizer.prefix_ids)
        for value, method in ((utterance.prompt, "prompt_ids"), (utterance.language, "prefix_for")):
            if value and not hasattr(self.tokenizer, method):
                what = "a prompt" if method == "prompt_ids" else f"language {value!r}"
                raise ValueError(f"{type(self.tokenizer).__name__} cannot condition on {what} (Whisper's can)")
        if utterance.prompt:
            prompt_ids = self.tokenizer.prompt_ids(utterance.prompt)
        if utterance.language:
            prefix_ids = self.tokenizer.prefix_for(utterance.language)
        return prompt_ids, prefix_ids
