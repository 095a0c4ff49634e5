"""Keeping a long run from training on garbage: steps with a non-finite loss are skipped and counted,
and too many in a row stop the run with a message that says what to try."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with a NaN or infinite loss."""


class NonFiniteGuard:
    """Counts skipped steps; `check` says whether a loss may be used for an update."""

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def check(self, loss: torch.Tensor, step: int, ids: Sequence[str] = ()) -> bool:
        """True for a finite loss; otherwise log, count, and raise once too many came in a row."""
        if bool(torch.isfinite(loss)):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        log.warning("skipping step %d: loss is %s (batch ids %s); %d in a row",
                    step, loss.item(), ", ".join(list(ids)[:4]), self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss; lower the learning rate, check the "
                "data, or raise task.max_consecutive_nonfinite"
            )
        return False
