"""Audio I/O through soundfile (torchaudio's own loaders need torchcodec, which we do not use).

Every failure is an `AudioError` whose message starts with the file it is about, so a log line
points straight at the bad file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speechtrain.errors import DataError

AudioSource = str | Path | bytes


class AudioError(DataError):
    """A file that cannot be used as audio; `str(err)` is `"<path>: <reason>"`."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds
    sample_rate: int
    channels: int


def _open(source: AudioSource, name: str | Path | None) -> tuple[sf.SoundFile, str]:
    """Opens `source` (a path or a whole encoded file in memory) and returns it with the name to report."""
    label = str(name if name is not None else ("<bytes>" if isinstance(source, bytes) else source))
    if isinstance(source, bytes):
        if not source:
            raise AudioError(label, "audio bytes are empty")
        target = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError(label, "file not found" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(label, "file is empty (0 bytes)")
        target = path
    try:
        return sf.SoundFile(target), label
    except sf.LibsndfileError as err:
        raise AudioError(label, f"cannot decode audio ({err.error_string})") from err
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(label, f"cannot decode audio ({err})") from err


def audio_info(source: AudioSource, name: str | Path | None = None) -> AudioInfo:
    """Duration, rate and channels from the header alone: cheap enough to check a whole corpus."""
    handle, label = _open(source, name)
    with handle:
        if handle.frames <= 0:
            raise AudioError(label, "audio has no samples")
        return AudioInfo(handle.frames / handle.samplerate, handle.samplerate, handle.channels)


def load_audio(source: AudioSource, sample_rate: int, name: str | Path | None = None) -> torch.Tensor:
    """Reads a file (or encoded bytes, as HF datasets store them) as float32 mono at `sample_rate`.

    Channels are averaged; another rate is resampled with torchaudio. `name` labels errors when
    `source` is bytes. Returns a tensor of shape [samples].
    """
    handle, label = _open(source, name)
    with handle:
        try:
            frames = handle.read(dtype="float32", always_2d=True)  # [samples, channels]
        except (sf.SoundFileError, RuntimeError) as err:
            raise AudioError(label, f"cannot decode audio ({err})") from err
        file_rate = handle.samplerate
    if frames.shape[0] == 0:
        raise AudioError(label, "audio has no samples")
    if not np.isfinite(frames).all():
        raise AudioError(label, "audio contains NaN or infinite samples")
    waveform = torch.from_numpy(frames.mean(axis=1))  # [samples]
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return waveform.contiguous()
