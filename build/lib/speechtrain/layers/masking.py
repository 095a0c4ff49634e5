"""Mask schedules for masked (MaskGIT-style) token modelling, and picking an exact number of positions to mask.

A schedule maps a time `t` in [0, 1] to the fraction of tokens still masked: 1 at `t = 0` (all masked), 0 at
`t = 1` (all filled). Training draws `t` uniformly and masks that fraction; iterative decoding walks `t` from
0 to 1 and keeps that fraction masked after each step (Chang et al. 2022, MaskGIT, sec. 3.2).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "linear")


def check_schedule(schedule: str) -> str:
    """Returns `schedule` unchanged, or raises a ValueError listing the valid names."""
    if schedule not in SCHEDULES:
        raise ValueError(f"mask schedule {schedule!r} is unknown; use one of {SCHEDULES}")
    return schedule


def mask_fraction(times: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """Fraction of tokens masked at `times` (any shape, values in [0, 1]): cos(t pi / 2) or 1 - t."""
    check_schedule(schedule)
    times = times.clamp(0.0, 1.0)
    return torch.cos(times * (math.pi / 2)) if schedule == "cosine" else 1.0 - times


def masked_count(available: torch.Tensor, fraction: torch.Tensor, minimum: int = 1) -> torch.Tensor:
    """How many of `available` positions a `fraction` masks: floor(available * fraction) (MaskGIT's and
    soundstorm-pytorch's rounding), at least `minimum`, at most `available` (Long, the shape of `available`)."""
    count = torch.floor(available.double() * fraction.double() + 1e-9).long()  # 1e-9: 20 * 0.15 is 3, not 2
    return torch.minimum(count.clamp(min=minimum), available.long())


def random_subset(
    candidates: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exactly `counts[b]` positions of row `b` of the boolean `candidates` [B, T], uniformly at random (all of
    them when there are fewer); returns a boolean [B, T] that is False outside `candidates`."""
    scores = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates sort last
    ranks = scores.argsort(dim=-1).argsort(dim=-1)  # [B, T]: 0 = first picked
    return (ranks < counts.to(candidates.device)[:, None]) & candidates
