"""Samples (predictions beside references, audio) sent to whichever loggers a run has."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import soundfile
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

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
