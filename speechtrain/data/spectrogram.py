"""The spectrograms of VITS, as the original mel_processing.py computes them, and the one Slaney mel filter bank
(`mel_filters`), which Whisper's features use too.

The linear magnitude spectrogram feeds the posterior encoder; the log-mel spectrogram of real and
generated audio gives the reconstruction loss. Both run in float32 even under autocast (the mel loss
is taken on generated audio inside an autocast region), and have `frames = samples // hop_length`:
the audio is reflect-padded by `(n_fft - hop_length) / 2` on each side and the STFT is not centred.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from speechtrain.errors import ConfigError


def check_stft_sizes(n_fft: int, hop_length: int, win_length: int) -> None:
    """Raises a ValueError naming the sizes when `linear_spectrogram` cannot use them."""
    if not 0 < hop_length <= n_fft or (n_fft - hop_length) % 2:
        raise ConfigError(f"n_fft={n_fft} and hop_length={hop_length}: need 0 < hop_length <= n_fft with an even "
                         "difference, so that the padding gives samples // hop_length frames")
    if not 0 < win_length <= n_fft:
        raise ConfigError(f"win_length={win_length} must be in (0, n_fft={n_fft}]")


@lru_cache(maxsize=16)
def _hann_window(win_length: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(win_length, device=device)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) * 27.0 / np.log(6.4)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    hz[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel[log_region] - 15.0))
    return hz


@lru_cache(maxsize=16)
def mel_filters(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    """Slaney-scale, area-normalised triangular filters `[n_mels, n_fft // 2 + 1]` float32: the defaults of
    `librosa.filters.mel` (which the original VITS uses; `f_max=None` is `sample_rate / 2`) and Whisper's filters.

    Same formula as `torchaudio.functional.melscale_fbanks(norm="slaney", mel_scale="slaney")`, but computed in
    float64 like librosa and transformers, then rounded: torchaudio's float32 filters move Whisper's log-mel by up
    to 2e-5, these match transformers' features exactly. Cached: treat as read-only.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    mel_min, mel_max = _hz_to_mel(np.array([f_min, f_max], dtype=np.float64))
    edges = _mel_to_hz(np.linspace(mel_min, mel_max, n_mels + 2))  # [n_mels + 2] triangle corners in Hz
    widths = np.diff(edges)  # [n_mels + 1]
    offsets = edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))  # [n_freqs, n_mels]
    return torch.from_numpy(filters.T.astype(np.float32)).contiguous().to(device)


def _as_batch(audio: torch.Tensor) -> torch.Tensor:
    if audio.dim() == 3 and audio.shape[1] == 1:
        return audio[:, 0]  # [B, 1, samples] -> [B, samples]
    if audio.dim() != 2:
        raise ValueError(f"audio must be [batch, samples] or [batch, 1, samples], got shape {tuple(audio.shape)}")
    return audio


def linear_spectrogram(
    audio: torch.Tensor, n_fft: int, hop_length: int, win_length: int, center: bool = False
) -> torch.Tensor:
    """Magnitude spectrogram `sqrt(|STFT|^2 + 1e-6)` of `audio` `[B, samples]` (or `[B, 1, samples]`):
    float32 `[B, n_fft // 2 + 1, samples // hop_length]` (one frame more per row with `center=True`)."""
    check_stft_sizes(n_fft, hop_length, win_length)
    audio = _as_batch(audio)
    padding = (n_fft - hop_length) // 2
    if audio.shape[-1] <= padding:
        raise ValueError(f"audio of {audio.shape[-1]} samples is too short to reflect-pad by {padding}; "
                         f"give at least {padding + 1} samples")
    with torch.autocast(device_type=audio.device.type, enabled=False):
        audio = torch.nn.functional.pad(audio.float()[:, None], (padding, padding), mode="reflect")[:, 0]
        stft = torch.stft(
            audio, n_fft, hop_length=hop_length, win_length=win_length, window=_hann_window(win_length, audio.device),
            center=center, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
        )  # [B, n_fft // 2 + 1, frames]
        return torch.sqrt(torch.view_as_real(stft).pow(2).sum(-1) + 1e-6)


def spectrogram_to_mel(
    spectrogram: torch.Tensor, n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
    f_max: float | None = None,
) -> torch.Tensor:
    """Log-mel `log(max(mel @ spectrogram, 1e-5))` `[B, n_mels, frames]` of a linear spectrogram
    `[B, n_fft // 2 + 1, frames]` (the original's `spec_to_mel_torch`, used on the training targets)."""
    if spectrogram.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"spectrogram has {spectrogram.shape[-2]} bins; n_fft={n_fft} needs {n_fft // 2 + 1}")
    with torch.autocast(device_type=spectrogram.device.type, enabled=False):
        filters = mel_filters(n_fft, n_mels, sample_rate, f_min, f_max, spectrogram.device)
        return torch.log(torch.clamp(torch.matmul(filters, spectrogram.float()), min=1e-5))


def mel_spectrogram(
    audio: torch.Tensor, n_fft: int, n_mels: int, sample_rate: int, hop_length: int, win_length: int,
    f_min: float = 0.0, f_max: float | None = None, center: bool = False,
) -> torch.Tensor:
    """Log-mel spectrogram `[B, n_mels, samples // hop_length]` of `audio` `[B, samples]` (or `[B, 1, samples]`),
    the original's `mel_spectrogram_torch`: `spectrogram_to_mel(linear_spectrogram(audio))`."""
    spectrogram = linear_spectrogram(audio, n_fft, hop_length, win_length, center=center)
    return spectrogram_to_mel(spectrogram, n_fft, n_mels, sample_rate, f_min, f_max)
