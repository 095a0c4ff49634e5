"""The device handling of a tokenizer that wraps a frozen torch model (the codec, the semantic tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import torch
from torch import nn


class WrapsFrozenModel:
    """Moved between devices as its `model` is, and reports where that lives, so callers treat it as a module."""

    model: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Self:
        self.model.to(device)
        return self


def sample_rate_of_each(waveforms: Sequence[torch.Tensor], sample_rates: int | Sequence[int]) -> list[int]:
    """One sample rate per waveform of a batch (a corpus may mix rates; each waveform is resampled on its own)."""
    rates = [sample_rates] * len(waveforms) if isinstance(sample_rates, int) else list(sample_rates)
    if len(rates) != len(waveforms):
        raise ValueError(f"{len(waveforms)} waveforms but {len(rates)} sample rates")
    return rates
