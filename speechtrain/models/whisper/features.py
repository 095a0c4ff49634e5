"""Whisper's log-mel features in torch, equal to transformers' `WhisperFeatureExtractor`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from speechtrain.data.spectrogram import mel_filters
from speechtrain.models.feature_extraction import PretrainedFeatureExtractor


class WhisperFeatureExtractor(PretrainedFeatureExtractor):
    """Whisper's log-mel spectrogram, equal to transformers' `WhisperFeatureExtractor` (torch path).

    Every waveform is padded with `padding_value` to `chunk_length` seconds, so features always have
    `chunk_length * sampling_rate // hop_length` frames; the log-mel is clamped to 8 (log10) below
    each utterance's own maximum and scaled as `(x + 4) / 4`.
    """

    saved_attributes = ("chunk_length", "dither", "feature_size", "hop_length", "n_fft", "n_samples", "nb_max_frames",
                        "padding_value", "sampling_rate")
    returns_attention_mask = False

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        hop_length: int = 160,  # 10 ms at 16 kHz
        chunk_length: int = 30,  # seconds every input is padded to
        n_fft: int = 400,  # a 25 ms window
        padding_value: float = 0.0,
        dither: float = 0.0,
    ):
        self.feature_size = feature_size
        self.sampling_rate = sampling_rate
        self.hop_length = hop_length
        self.chunk_length = chunk_length
        self.n_fft = n_fft
        self.padding_value = padding_value
        self.dither = dither
        self.n_samples = chunk_length * sampling_rate
        self.nb_max_frames = self.n_samples // hop_length
        self.min_samples = 1  # anything is padded to the window
        self.mel_filters = mel_filters(n_fft, feature_size, sampling_rate, 0.0, 8000.0)  # [n_mels, n_freqs]
        self.window = torch.hann_window(n_fft)

    def __call__(self, waveforms: Sequence[torch.Tensor | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(features [B, feature_size, nb_max_frames] float32, frame_mask [B, nb_max_frames] bool)`."""
        if len(waveforms) == 0:
            raise ValueError("WhisperFeatureExtractor got an empty list of waveforms")
        waveforms = [torch.as_tensor(w, dtype=torch.float32) for w in waveforms]
        device = waveforms[0].device
        batch = torch.full((len(waveforms), self.n_samples), self.padding_value, device=device)
        for i, waveform in enumerate(waveforms):
            if waveform.dim() != 1:
                raise ValueError(f"waveform {i} has shape {tuple(waveform.shape)}; expected 1-D mono samples")
            if waveform.numel() > self.n_samples:
                raise ValueError(
                    f"waveform {i} has {waveform.numel()} samples ({waveform.numel() / self.sampling_rate:.2f} s), "
                    f"longer than the {self.chunk_length} s chunk ({self.n_samples} samples); "
                    "drop such utterances with max_duration"
                )
            batch[i, : waveform.numel()] = waveform
        if self.dither:
            batch = batch + self.dither * torch.randn_like(batch)
        lengths = torch.tensor([w.numel() for w in waveforms], device=device)

        stft = torch.stft(batch, self.n_fft, self.hop_length, window=self.window.to(device), return_complex=True)
        power = stft[..., :-1].abs().pow(2)  # [B, n_freqs, frames]: the last frame is dropped, as Whisper does
        mel = self.mel_filters.to(device) @ power  # [B, n_mels, frames]
        log_mel = mel.clamp(min=1e-10).log10()
        ceiling = log_mel.amax(dim=(1, 2), keepdim=True)  # [B, 1, 1]: each utterance's own maximum
        features = (torch.maximum(log_mel, ceiling - 8.0) + 4.0) / 4.0
        frame_mask = torch.arange(self.nb_max_frames, device=device) * self.hop_length < lengths[:, None]
        return features, frame_mask
