"""Speech2Text's features: Kaldi-compatible log-mel filterbanks, as transformers' `Speech2TextFeatureExtractor`
and fairseq's S2T."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from speechtrain.dependencies import import_torchaudio
from speechtrain.errors import ConfigError
from speechtrain.models.feature_extraction import PretrainedFeatureExtractor


class Speech2TextFeatureExtractor(PretrainedFeatureExtractor):
    """Kaldi-compatible log-mel filterbanks with utterance-level mean and variance normalisation, equal (within
    float32 rounding) to transformers' `Speech2TextFeatureExtractor` and fairseq's S2T features.

    Unlike Whisper's, features are frames-first, `[batch, frames, num_mel_bins]`, and padded only to the longest
    utterance of the batch (there is no fixed chunk, hence no `chunk_length`). Frames are 25 ms every 10 ms
    without edge padding, so a waveform of n >= 400 samples (16 kHz) gives `1 + (n - 400) // 160` frames.
    """

    saved_attributes = ("do_ceptral_normalize", "dither", "feature_size", "normalize_means", "normalize_vars",
                        "num_mel_bins", "padding_value", "sampling_rate")

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        num_mel_bins: int = 80,
        padding_value: float = 0.0,
        dither: float = 0.0,
        do_ceptral_normalize: bool = True,
        normalize_means: bool = True,
        normalize_vars: bool = True,
    ):
        if feature_size != num_mel_bins:
            raise ConfigError(f"feature_size={feature_size} must equal num_mel_bins={num_mel_bins}")
        self.feature_size = feature_size
        self.sampling_rate = sampling_rate
        self.num_mel_bins = num_mel_bins
        self.padding_value = padding_value
        self.dither = dither
        self.do_ceptral_normalize = do_ceptral_normalize
        self.normalize_means = normalize_means
        self.normalize_vars = normalize_vars
        self.frame_length = sampling_rate * 25 // 1000  # Kaldi's 25 ms window, 10 ms shift
        self.frame_shift = sampling_rate * 10 // 1000
        self.min_samples = self.frame_length  # one frame: Kaldi's fbank makes none of a shorter waveform

    def num_frames(self, num_samples: int) -> int:
        return 0 if num_samples < self.frame_length else 1 + (num_samples - self.frame_length) // self.frame_shift

    def _fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """`[samples]` in [-1, 1] -> `[frames, num_mel_bins]`, normalised over the utterance."""
        import_torchaudio()  # one sentence, not a traceback, when torchaudio does not load against torch
        import torchaudio.compliance.kaldi as kaldi

        features = kaldi.fbank(
            waveform[None] * 32768,  # Kaldi expects the 16-bit integer scale
            num_mel_bins=self.num_mel_bins, sample_frequency=self.sampling_rate, dither=self.dither,
        )
        if not self.do_ceptral_normalize:
            return features
        if self.normalize_means:
            features = features - features.mean(dim=0)
        if self.normalize_vars:  # fairseq's floor keeps a constant (silent) channel finite
            features = features / features.var(dim=0, unbiased=False).clamp(min=1e-10).sqrt()
        return features

    def __call__(self, waveforms: Sequence[torch.Tensor | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(features [B, frames, num_mel_bins] float32, frame_mask [B, frames] bool)`; frames is the
        longest utterance's count and padded frames hold `padding_value`."""
        if len(waveforms) == 0:
            raise ValueError("Speech2TextFeatureExtractor got an empty list of waveforms")
        utterances = []
        for i, waveform in enumerate(waveforms):
            waveform = torch.as_tensor(waveform, dtype=torch.float32)
            if waveform.dim() != 1:
                raise ValueError(f"waveform {i} has shape {tuple(waveform.shape)}; expected 1-D mono samples")
            if waveform.numel() < self.frame_length:
                raise ValueError(
                    f"waveform {i} has {waveform.numel()} samples, fewer than one {self.frame_length}-sample "
                    f"(25 ms) frame at {self.sampling_rate} Hz"
                )
            utterances.append(self._fbank(waveform))
        lengths = torch.tensor([len(u) for u in utterances])
        features = torch.nn.utils.rnn.pad_sequence(utterances, batch_first=True, padding_value=self.padding_value)
        frame_mask = torch.arange(features.shape[1]) < lengths[:, None]
        return features, frame_mask.to(features.device)
