"""Batched feature extraction in torch, saved and loaded as Hugging Face `preprocessor_config.json`."""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from speechtrain.errors import CheckpointError, ConfigError

CONFIG_NAME = "preprocessor_config.json"


@runtime_checkable
class FeatureExtractor(Protocol):
    """What collators and tasks need from a feature extractor.

    `__call__` turns 1-D waveforms at `sampling_rate` into `(features [B, n_features, frames],
    frame_mask [B, frames] bool)`, True on frames that hold audio. `save_pretrained(dir)` writes the
    HF `preprocessor_config.json` and the class's `from_pretrained(dir)` reads it back.
    `min_samples` is the shortest waveform it accepts; an extractor that pads every waveform to a
    fixed window has that window's length in seconds as `chunk_length` (data modules cost items by it).
    """

    sampling_rate: int
    min_samples: int

    def __call__(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def save_pretrained(self, directory: str | Path) -> None: ...


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


def slaney_mel_filters(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Area-normalised triangular filters on the slaney mel scale, [n_mels, n_freqs] float32.

    Same formula as `torchaudio.functional.melscale_fbanks(norm="slaney", mel_scale="slaney")` and
    librosa, but computed in float64 like transformers: torchaudio's float32 filters move the
    log-mel by up to 2e-5, these match transformers' features exactly.
    """
    fft_freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    mel_min, mel_max = _hz_to_mel(np.array([f_min, f_max], dtype=np.float64))
    edges = _mel_to_hz(np.linspace(mel_min, mel_max, n_mels + 2))  # [n_mels + 2] triangle corners in Hz
    widths = np.diff(edges)  # [n_mels + 1]
    offsets = edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))  # [n_freqs, n_mels]
    return torch.from_numpy(filters.T.astype(np.float32)).contiguous()


class PretrainedFeatureExtractor(ABC):
    """`save_pretrained`/`from_pretrained` through `preprocessor_config.json`: a subclass is named after
    transformers' class (its `feature_extractor_type`), writes the file with `to_dict` and is rebuilt from the
    file's values that are its constructor's arguments."""

    @abstractmethod
    def to_dict(self) -> dict:
        """The constructor's arguments, as `preprocessor_config.json` stores them."""

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PretrainedFeatureExtractor:
        """The extractor of a folder's `preprocessor_config.json`, which must be of this class (or say none)."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; expected a Hugging Face-format model folder")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: invalid JSON ({err})") from err
        kind = config.get("feature_extractor_type", cls.__name__)
        if kind != cls.__name__:
            raise CheckpointError(f"{path}: feature_extractor_type is {kind!r}, expected {cls.__name__!r}")
        names = inspect.signature(cls).parameters
        return cls(**{name: value for name, value in config.items() if name in names})


class WhisperFeatureExtractor(PretrainedFeatureExtractor):
    """Whisper's log-mel spectrogram, equal to transformers' `WhisperFeatureExtractor` (torch path).

    Every waveform is padded with `padding_value` to `chunk_length` seconds, so features always have
    `chunk_length * sampling_rate // hop_length` frames; the log-mel is clamped to 8 (log10) below
    each utterance's own maximum and scaled as `(x + 4) / 4`.
    """

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        hop_length: int = 160,
        chunk_length: int = 30,
        n_fft: int = 400,
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
        self.mel_filters = slaney_mel_filters(1 + n_fft // 2, feature_size, sampling_rate, 0.0, 8000.0)
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

    def to_dict(self) -> dict:
        """The HF `preprocessor_config.json` fields, so transformers loads what we save."""
        return {
            "chunk_length": self.chunk_length,
            "dither": self.dither,
            "feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "n_fft": self.n_fft,
            "n_samples": self.n_samples,
            "nb_max_frames": self.nb_max_frames,
            "padding_side": "right",
            "padding_value": self.padding_value,
            "return_attention_mask": False,
            "sampling_rate": self.sampling_rate,
        }


class Speech2TextFeatureExtractor(PretrainedFeatureExtractor):
    """Kaldi-compatible log-mel filterbanks with utterance-level mean and variance normalisation, equal (within
    float32 rounding) to transformers' `Speech2TextFeatureExtractor` and fairseq's S2T features.

    Unlike Whisper's, features are frames-first, `[batch, frames, num_mel_bins]`, and padded only to the longest
    utterance of the batch (there is no fixed chunk, hence no `chunk_length`). Frames are 25 ms every 10 ms
    without edge padding, so a waveform of n >= 400 samples (16 kHz) gives `1 + (n - 400) // 160` frames.
    """

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

    def to_dict(self) -> dict:
        """The HF `preprocessor_config.json` fields, so transformers loads what we save."""
        return {
            "do_ceptral_normalize": self.do_ceptral_normalize,
            "dither": self.dither,
            "feature_extractor_type": "Speech2TextFeatureExtractor",
            "feature_size": self.feature_size,
            "normalize_means": self.normalize_means,
            "normalize_vars": self.normalize_vars,
            "num_mel_bins": self.num_mel_bins,
            "padding_side": "right",
            "padding_value": self.padding_value,
            "return_attention_mask": True,
            "sampling_rate": self.sampling_rate,
        }
