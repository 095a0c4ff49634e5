"""Samples (predictions beside references, later audio) sent to whichever loggers a run has."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

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
