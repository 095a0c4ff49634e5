"""Learning-rate schedules: linear warm-up, then a decay to `min_lr_ratio` of the peak.

`linear` and `cosine` decay over the run's length, so they need one (`trainer.max_steps` or `trainer.max_epochs`);
an open-ended run (both -1) is refused with a `ConfigError` rather than given a made-up length after which the
learning rate would sit at its floor. `constant` and `inverse_sqrt` do not depend on the length and suit such
a run.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from speechtrain.errors import ConfigError

DECAYS = ("linear", "cosine", "constant", "inverse_sqrt")
LENGTH_FREE_DECAYS = ("constant", "inverse_sqrt")


def warmup_decay_factor(
    step: int, warmup_steps: int, total_steps: int, decay: str = "linear", min_lr_ratio: float = 0.0
) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based)."""
    if decay not in DECAYS:
        raise ConfigError(f"unknown learning-rate decay task.lr_decay={decay!r}; choose one of {', '.join(DECAYS)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if decay == "inverse_sqrt":
        return max(min_lr_ratio, math.sqrt(max(warmup_steps, 1) / (step + 1)))
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def warmup_decay_schedule(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, decay: str = "linear", min_lr_ratio: float = 0.0
) -> LambdaLR:
    """A LambdaLR stepping once per optimiser step."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return LambdaLR(optimizer, lambda step: warmup_decay_factor(step, warmup_steps, total_steps, decay, min_lr_ratio))


def step_schedule(optimizer: Optimizer, estimated_steps: float, warmup_steps: int, decay: str = "linear",
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """`warmup_decay_schedule` over a run of `estimated_steps` optimiser steps (Lightning's
    `trainer.estimated_stepping_batches`, infinite for an open-ended run)."""
    if math.isfinite(estimated_steps):
        return warmup_decay_schedule(optimizer, warmup_steps, max(int(estimated_steps), 1), decay, min_lr_ratio)
    if decay not in LENGTH_FREE_DECAYS:
        raise ConfigError(
            f"task.lr_decay={decay} decays over the run's length, but the run has none (trainer.max_steps=-1 and "
            "trainer.max_epochs=-1): set trainer.max_steps or trainer.max_epochs, or choose task.lr_decay="
            f"{' or '.join(LENGTH_FREE_DECAYS)} for an open-ended run"
        )
    return warmup_decay_schedule(optimizer, warmup_steps, max(warmup_steps, 1), decay, min_lr_ratio)
