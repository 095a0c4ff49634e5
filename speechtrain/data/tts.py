"""TTS data: checked (text, audio, speaker) utterances, padded batches with linear spectrograms, the data module.

VITS trains on random windows of `segment_frames` spectrogram frames and aligns every token to at
least one frame, so an utterance must be at least one window long and have no more tokens (blanks
included) than frames; anything else is found when the dataset is built, not in the middle of an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from speechtrain.data.corpora import CorpusSpec, Utterance
from speechtrain.data.datamodule import SpeechDataModule
from speechtrain.data.datasets import CheckedDataset, Problem
from speechtrain.data.spectrogram import check_stft_sizes, linear_spectrogram
from speechtrain.errors import ConfigError, DataError


class TtsTokenizer(Protocol):
    """What the TTS data layer needs of a tokenizer (`speechtrain.models.vits.tokenizer.VitsTextTokenizer` has it)."""

    pad_id: int

    def encode(self, text: str) -> list[int]: ...


class TtsDataset(CheckedDataset):
    """Utterances for TTS, checked once at construction, loaded at `sample_rate` on access.

    Construction drops (and counts by reason in `skipped`, with one summary warning) every utterance
    with a missing or unreadable audio file, an empty transcript, characters the tokenizer rejects (a
    `strict` tokenizer raises on characters outside its symbol table; a lenient one drops them and
    warns once per character), no symbols left, audio longer than `max_duration` seconds or shorter
    than one training segment (`segment_frames * hop_length` samples), more tokens (after blanks are
    interspersed) than spectrogram frames (`samples // hop_length`), or, when `speaker_ids` is given,
    a speaker that is not in it. With `strict=True` the first bad utterance raises a `ValueError`
    naming its file instead. Token ids are computed once, by the check.

    `dataset[i]` is a dict:
        id:         str
        text:       str, the transcript stripped of surrounding whitespace
        token_ids:  list[int], `tokenizer.encode(text)` (blanks included)
        audio:      float32 Tensor [samples], mono at `sample_rate`
        speaker_id: int, `speaker_ids[utterance.speaker]`, or None without `speaker_ids`
    or None when the audio no longer loads or is shorter once loaded than the check allowed (logged,
    counted in `skipped_at_load`, dropped by the collator; `strict=True` raises instead).
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: TtsTokenizer,
        sample_rate: int,
        hop_length: int,
        segment_frames: int,
        max_duration: float,
        strict: bool = False,
        speaker_ids: Mapping[str, int] | None = None,
        name: str = "dataset",
        num_threads: int = 8,
    ):
        if hop_length < 1 or segment_frames < 1:
            raise ConfigError(f"hop_length={hop_length} and segment_frames={segment_frames} must be positive")
        self.tokenizer = tokenizer
        self.hop_length = hop_length
        self.segment_frames = segment_frames
        self.speaker_ids = None if speaker_ids is None else dict(speaker_ids)
        super().__init__(utterances, sample_rate, max_duration, strict=strict, name=name, num_threads=num_threads)

    def _check(self, utterance: Utterance) -> tuple[float, Problem | None, list[int]]:
        """The transcript and speaker first, then the audio header, then the lengths they imply together."""
        text = utterance.text.strip()
        if not text:
            return math.nan, ("empty transcript", f"id {utterance.id}"), []
        if self.speaker_ids is not None and utterance.speaker not in self.speaker_ids:
            return math.nan, ("unknown speaker", f"speaker {utterance.speaker!r} is not in speaker_ids"), []
        try:
            token_ids = self.tokenizer.encode(text)
        except DataError as err:  # unknown symbols; a config or install mistake must not skip every line
            return math.nan, ("characters outside the symbol table", str(err)), []
        if not token_ids:
            return math.nan, ("no symbols in the table", f"{text!r} encodes to nothing"), []
        duration, problem = self._check_audio(utterance)
        if problem is not None:
            return duration, problem, []
        samples = math.floor(duration * self.sample_rate + 1e-6)
        if samples < self.segment_frames * self.hop_length:
            return math.nan, ("shorter than one training segment", f"{samples} samples < segment_frames "
                              f"{self.segment_frames} * hop_length {self.hop_length}"), []
        if samples // self.hop_length < len(token_ids):
            return math.nan, ("more tokens than frames", f"{len(token_ids)} tokens (blanks included), "
                              f"{samples // self.hop_length} frames"), []
        return duration, None, token_ids

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        token_ids = self.token_ids(index)
        needed = max(self.segment_frames, len(token_ids)) * self.hop_length
        audio = self._load_audio(index, min_samples=needed)
        if audio is None:
            return None
        utterance = self.utterances[index]
        speaker_id = None if self.speaker_ids is None else self.speaker_ids[utterance.speaker]
        return {"id": utterance.id, "text": utterance.text.strip(), "token_ids": token_ids, "audio": audio,
                "speaker_id": speaker_id}


class TtsCollator:
    """Pads `TtsDataset` items into a VITS training batch; items that failed to load (None) are dropped.

        input_ids:           int64 [B, T_text], token ids right-padded with `pad_id`
        attention_mask:      bool [B, T_text], True on real tokens
        waveform:            float32 [B, 1, samples], zero-padded
        waveform_lengths:    int64 [B]
        spectrogram:         float32 [B, n_fft // 2 + 1, frames], linear magnitude of each row's own audio
                             (`linear_spectrogram`, frames = samples // hop_length), zero-padded
        spectrogram_lengths: int64 [B]
        spectrogram_mask:    bool [B, frames], True on real frames
        speaker_ids:         int64 [B], or None when the items have no speaker
        ids, texts:          list[str] of length B
        num_skipped:         int, items dropped from this batch because they failed to load
        audio_seconds:       float, seconds of unpadded audio (for throughput), only when `sample_rate` is given
    The whole batch is None when every item failed to load. Each spectrogram is computed from its own
    unpadded audio, so the reflect padding at its end is the original's, not the batch's zeros.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int, pad_id: int = 0, sample_rate: int | None = None):
        check_stft_sizes(n_fft, hop_length, win_length)
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        loaded = [item for item in items if item is not None]
        if not loaded:
            return None
        speakers = [item["speaker_id"] for item in loaded]
        if len({speaker is None for speaker in speakers}) > 1:
            raise DataError(f"items {[item['id'] for item in loaded]} mix rows with and without a speaker_id")
        spectrograms = [linear_spectrogram(item["audio"][None], self.n_fft, self.hop_length, self.win_length)[0]
                        for item in loaded]  # each [bins, frames]
        text_lengths = torch.tensor([len(item["token_ids"]) for item in loaded])
        waveform_lengths = torch.tensor([item["audio"].numel() for item in loaded])
        spectrogram_lengths = torch.tensor([spectrogram.shape[1] for spectrogram in spectrograms])

        batch = len(loaded)
        input_ids = torch.full((batch, int(text_lengths.max())), self.pad_id, dtype=torch.long)
        waveform = torch.zeros(batch, 1, int(waveform_lengths.max()))
        spectrogram = torch.zeros(batch, self.n_fft // 2 + 1, int(spectrogram_lengths.max()))
        for row, (item, row_spectrogram) in enumerate(zip(loaded, spectrograms)):
            input_ids[row, : text_lengths[row]] = torch.tensor(item["token_ids"])
            waveform[row, 0, : waveform_lengths[row]] = item["audio"]
            spectrogram[row, :, : spectrogram_lengths[row]] = row_spectrogram
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.arange(input_ids.shape[1]) < text_lengths[:, None],
            "waveform": waveform,
            "waveform_lengths": waveform_lengths,
            "spectrogram": spectrogram,
            "spectrogram_lengths": spectrogram_lengths,
            "spectrogram_mask": torch.arange(spectrogram.shape[2]) < spectrogram_lengths[:, None],
            "speaker_ids": None if speakers[0] is None else torch.tensor(speakers),
            "ids": [item["id"] for item in loaded],
            "texts": [item["text"] for item in loaded],
            "num_skipped": len(items) - len(loaded),
        }
        if self.sample_rate is not None:
            batch["audio_seconds"] = float(waveform_lengths.sum()) / self.sample_rate
        return batch


def speaker_ids_from(utterances: Sequence[Utterance]) -> dict[str, int] | None:
    """`{speaker: id}` over the corpus's `speaker` field, ids in sorted name order; None (a single-speaker
    model) when fewer than two speakers are named."""
    speakers = sorted({u.speaker for u in utterances if u.speaker is not None})
    return {speaker: i for i, speaker in enumerate(speakers)} if len(speakers) > 1 else None


class TtsDataModule(SpeechDataModule):
    """Reads the train (and val) corpora, checks every utterance for TTS and serves `TtsCollator` batches.

    Corpora, the validation split (`val` or `val_fraction`) and batching (`DynamicBucketSampler`
    under `max_batch_seconds`; create the Trainer with `use_distributed_sampler=False`) are
    `SpeechDataModule`'s; the checks are `TtsDataset`'s. `sample_rate`, `hop_length` and the
    spectrogram's `n_fft`/`win_length` must be the model's.

    Speakers: `speaker_ids` maps the corpora's `speaker` names to embedding rows. Given (as when
    fine-tuning a multi-speaker checkpoint), it is kept as is; otherwise `setup` builds it from the
    training corpus (`speaker_ids_from`: None for one speaker). Utterances whose speaker is not in
    the mapping are skipped. Set the model's `num_speakers` from `num_speakers` after `setup`.
    """

    def __init__(
        self,
        train: CorpusSpec | Mapping,
        val: CorpusSpec | Mapping | None,
        tokenizer: TtsTokenizer,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        win_length: int,
        segment_frames: int,
        max_batch_seconds: float,
        max_duration: float,
        num_workers: int = 0,
        strict: bool = False,
        val_fraction: float = 0.0,
        seed: int = 0,
        num_buckets: int = 10,
        max_batch_size: int | None = None,
        speaker_ids: Mapping[str, int] | None = None,
    ):
        super().__init__(
            train, val, max_batch_seconds, max_duration, num_workers=num_workers, strict=strict,
            val_fraction=val_fraction, seed=seed, num_buckets=num_buckets, max_batch_size=max_batch_size,
        )
        if segment_frames * hop_length > max_duration * sample_rate:
            raise ConfigError(f"a training segment of segment_frames={segment_frames} * hop_length={hop_length} "
                             f"samples is longer than max_duration={max_duration} s at {sample_rate} Hz; every "
                             "utterance would be skipped")
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.segment_frames = segment_frames
        self.speaker_ids = None if speaker_ids is None else {str(k): int(v) for k, v in speaker_ids.items()}
        self._speakers_given = speaker_ids is not None
        self.collator = TtsCollator(n_fft, hop_length, win_length, pad_id=tokenizer.pad_id, sample_rate=sample_rate)

    @property
    def num_speakers(self) -> int:
        """Speaker embedding rows the model needs: the largest id plus one, or 1 without speakers."""
        return 1 if not self.speaker_ids else max(self.speaker_ids.values()) + 1

    def _prepare(self, train: list[Utterance]) -> None:
        if not self._speakers_given:
            self.speaker_ids = speaker_ids_from(train)

    def _dataset(self, utterances: list[Utterance], name: str) -> TtsDataset:
        return TtsDataset(
            utterances, self.tokenizer, self.sample_rate, self.hop_length, self.segment_frames, self.max_duration,
            strict=self.strict, speaker_ids=self.speaker_ids, name=name,
        )
