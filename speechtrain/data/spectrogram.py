"""The spectrograms of VITS, as the original mel_processing.py computes them.

The linear magnitude spectrogram feeds the posterior encoder; the log-mel spectrogram of real and
generated audio gives the reconstruction loss. Both run in float32 even under autocast (the mel loss
is taken on generated audio inside an autocast region), and have `frames = samples // hop_length`:
the audio is reflect-padded by `(n_fft - hop_length) / 2` on each side and the STFT is not centred.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torchaudio

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


@lru_cache(maxsize=16)
def mel_filters(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters `[n_mels, n_fft // 2 + 1]`, the defaults of the
    `librosa.filters.mel` that the original uses (`f_max=None` is `sample_rate / 2`). Cached: treat as read-only."""
    filters = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, f_min, sample_rate / 2 if f_max is None else f_max, n_mels, sample_rate,
        norm="slaney", mel_scale="slaney",
    )  # [n_freqs, n_mels]
    return filters.T.contiguous().to(device)


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
