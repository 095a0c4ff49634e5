"""Samples (predictions beside references, audio, pictures) sent to whichever loggers a run has.

Audio and images also go to files in the run's `samples/step_N/` folder (wav, PNG), so that a run with the CSV
logger or none has them too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from speechtrain.data.spectrogram import mel_spectrogram
from speechtrain.plots import matrix_image, write_png

log = logging.getLogger(__name__)


def log_text_table(
    loggers: Iterable[Logger], key: str, columns: Sequence[str], rows: Sequence[Sequence[str]], step: int
) -> None:
    """A small table: TensorBoard gets markdown, W&B a table, and the console log one line a row."""
    for row in rows:
        log.info("%s step %d | %s", key, step, " | ".join(f"{c}: {v}" for c, v in zip(columns, row, strict=True)))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            escape = lambda text: str(text).replace("|", "\\|")
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in rows]
            logger.experiment.add_text(key, "\n".join(lines), global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=key, columns=list(columns), data=[list(row) for row in rows], step=step)


def log_audio(
    loggers: Iterable[Logger],
    key: str,
    clips: Sequence[tuple[str, torch.Tensor]],
    sample_rate: int,
    step: int,
    out_dir: Path | None = None,
) -> None:
    """Named waveforms (1-D, float in [-1, 1]) to TensorBoard, W&B and, if given, wav files in `out_dir`."""
    clips = [(name, waveform.detach().float().cpu().clamp(-1.0, 1.0)) for name, waveform in clips]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, waveform in clips:
            soundfile.write(out_dir / f"{name}.wav", waveform.numpy(), sample_rate, subtype="PCM_16")
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for name, waveform in clips:
                logger.experiment.add_audio(f"{key}/{name}", waveform[None], global_step=step, sample_rate=sample_rate)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log(
                {f"{key}/{name}": wandb.Audio(waveform.numpy(), sample_rate=sample_rate) for name, waveform in clips}
                | {"trainer/global_step": step}
            )


def log_images(
    loggers: Iterable[Logger],
    key: str,
    images: Sequence[tuple[str, np.ndarray]],
    step: int,
    out_dir: Path | None = None,
) -> None:
    """Named RGB images (`uint8 [height, width, 3]`, see `speechtrain.plots`) to TensorBoard, W&B and, if given,
    PNG files in `out_dir`."""
    if out_dir is not None:
        for name, image in images:
            write_png(out_dir / f"{name}.png", image)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for name, image in images:
                logger.experiment.add_image(f"{key}/{name}", image, global_step=step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({f"{key}/{name}": wandb.Image(image) for name, image in images}
                                  | {"trainer/global_step": step})


def mel_images(
    clips: Sequence[tuple[str, torch.Tensor]],
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> list[tuple[str, np.ndarray]]:
    """`(f"{name}_mel", image [n_mels, samples // hop_length, 3])` of each named waveform (1-D): its log-mel
    spectrogram, lowest bin at the bottom, on one colour scale for all the clips so that they compare. A clip
    shorter than `n_fft` samples is drawn zero-padded to `n_fft`."""
    padded = [F.pad(waveform.detach().float().cpu().reshape(1, -1), (0, max(n_fft - waveform.numel(), 0)))
              for _, waveform in clips]  # [1, samples] each
    mels = [mel_spectrogram(waveform, n_fft, n_mels, sample_rate, hop_length, win_length, f_min, f_max)[0]
            for waveform in padded]  # [n_mels, frames] each
    low, high = min(float(m.min()) for m in mels), max(float(m.max()) for m in mels)
    return [(f"{name}_mel", matrix_image(mel, low, high)) for (name, _), mel in zip(clips, mels, strict=True)]
