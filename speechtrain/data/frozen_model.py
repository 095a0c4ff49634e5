"""The device handling of a tokenizer that wraps a frozen torch model (the codec, the semantic tokenizer)."""

from __future__ import annotations

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
