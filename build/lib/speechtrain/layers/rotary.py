"""Rotary position embedding (Su et al. 2021, RoFormer) in the "rotate half" layout of GPT-NeoX and
lucidrains' models: the first and second halves of each head's features form the rotated pairs.

Angles and the rotation are computed in float32 (as the originals, which disable autocast there) and the
result is cast back, so bf16 runs do not lose positions at long lengths.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Angles `position * theta^(-2i/dim)` for the `dim` rotated features of a head."""

    def __init__(self, dim: int, theta: float = 10_000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        self.dim, self.theta = dim, theta

    def forward(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        """Float32 angles `[length, dim]` of positions 0..length-1 (each frequency twice, one per half)."""
        inverse_frequencies = self.theta ** -(torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
                                              / self.dim)
        positions = torch.arange(length, device=device, dtype=torch.float32)
        angles = positions[:, None] * inverse_frequencies[None, :]  # [T, dim / 2]
        return torch.cat((angles, angles), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotates the first `angles.shape[-1]` features of `x` [..., T, head_dim] by `angles` [T, rotary_dim]."""
    rotary_dim = angles.shape[-1]
    rotated, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    rotated = rotated * angles.cos() + rotate_half(rotated) * angles.sin()
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)
