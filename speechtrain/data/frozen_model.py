"""What the tokenizers that wrap a frozen torch model (the codec, the semantic tokenizer) share: device handling,
their input waveforms at the model's rate, and batches of utterances of different lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import torch
import torchaudio
from torch import nn


class WrapsFrozenModel:
    """Moved between devices as its `model` is, and reports where that lives, so callers treat it as a module."""

    model: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    sample_rate: int  # what the model reads

    def to(self, device: str | torch.device) -> Self:
        self.model.to(device)
        return self

    def mono_at_model_rate(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One mono waveform [samples] at `sample_rate` as float32 at the model's rate, on its device."""
        if waveform.dim() != 1 or waveform.numel() == 0:
            raise ValueError(f"expected one non-empty mono waveform [samples], got shape {tuple(waveform.shape)}")
        waveform = waveform.to(self.device, torch.float32)
        if sample_rate != self.sample_rate:
            waveform = torchaudio.functional.resample(waveform, sample_rate, self.sample_rate)
        return waveform


def sample_rate_of_each(waveforms: Sequence[torch.Tensor], sample_rates: int | Sequence[int]) -> list[int]:
    """One sample rate per waveform of a batch (a corpus may mix rates; each waveform is resampled on its own)."""
    rates = [sample_rates] * len(waveforms) if isinstance(sample_rates, int) else list(sample_rates)
    if len(rates) != len(waveforms):
        raise ValueError(f"{len(waveforms)} waveforms but {len(rates)} sample rates")
    return rates


def right_padded(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors [channels, steps_i] as one zero-padded batch [batch, channels, max steps]."""
    padded = parts[0].new_zeros(len(parts), parts[0].shape[0], max(part.shape[-1] for part in parts))
    for row, part in enumerate(parts):
        padded[row, :, : part.shape[-1]] = part
    return padded
