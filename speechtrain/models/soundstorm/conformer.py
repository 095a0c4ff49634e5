"""The Conformer of lucidrains/soundstorm-pytorch (after Gulati et al. 2020): per block a half-step
feed-forward, rotary self-attention, a depthwise convolution module, a second half-step feed-forward, each
pre-normed and residual, then a post-norm. Padded frames are kept out of attention (a key-padding mask) and out
of the convolution (zeroed before and after it), so a padded sequence gives the same outputs as alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.attention import attend, padding_to_attention_mask
from speechtrain.layers.rotary import RotaryEmbedding, apply_rotary


class FeedForward(nn.Module):
    """Pre-norm Linear-Swish-Linear."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult)
        self.fc2 = nn.Linear(dim * mult, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.silu(self.fc1(self.norm(x))))))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with rotary positions, through the shared `attend` dispatch."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, implementation: str) -> None:
        super().__init__()
        self.heads, self.dropout, self.attn_implementation = heads, dropout, implementation
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, angles: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        x = self.norm(x)
        q, k, v = (self.to_q(x), *self.to_kv(x).chunk(2, dim=-1))
        q, k, v = (t.view(batch, time, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
        q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        out = attend(q, k, v, mask=key_mask, dropout_p=self.dropout if self.training else 0.0,
                     implementation=self.attn_implementation)
        return self.to_out(out.transpose(1, 2).reshape(batch, time, -1))  # [B, T, H * Dh] -> [B, T, D]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of `[B, C, T]`, scale only (the seed's ChanLayerNorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-6 if x.dtype == torch.float32 else 1e-4
        variance, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * variance.clamp(min=eps).rsqrt() * self.gamma


class ConvModule(nn.Module):
    """Pre-norm, pointwise conv to 2x expanded channels, GLU, depthwise conv ("same" padding), Swish, channel
    LayerNorm (where the Conformer paper has BatchNorm, as the seed), pointwise conv back."""

    def __init__(self, dim: int, expansion: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        inner = dim * expansion
        self.padding = (kernel_size // 2, kernel_size // 2 - (kernel_size + 1) % 2)  # even kernels: one less right
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Conv1d(dim, 2 * inner, 1)
        self.depthwise = nn.Conv1d(inner, inner, kernel_size, groups=inner)
        self.channel_norm = ChannelLayerNorm(inner)
        self.pointwise_out = nn.Conv1d(inner, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        x = F.glu(self.pointwise_in(self.norm(x).transpose(1, 2)), dim=1)  # [B, T, D] -> [B, inner, T]
        keep = None if frame_mask is None else frame_mask[:, None, :]
        if keep is not None:
            x = x.masked_fill(~keep, 0.0)
        x = self.depthwise(F.pad(x, self.padding))
        if keep is not None:
            x = x.masked_fill(~keep, 0.0)
        x = self.pointwise_out(self.channel_norm(F.silu(x)))
        return self.dropout(x.transpose(1, 2))  # [B, D, T] -> [B, T, D]


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, conv_expansion_factor: int,
                 conv_kernel_size: int, attn_dropout: float, ff_dropout: float, conv_dropout: float,
                 attn_implementation: str) -> None:
        super().__init__()
        self.ff1 = FeedForward(dim, ff_mult, ff_dropout)
        self.attn = Attention(dim, heads, dim_head, attn_dropout, attn_implementation)
        self.conv = ConvModule(dim, conv_expansion_factor, conv_kernel_size, conv_dropout)
        self.ff2 = FeedForward(dim, ff_mult, ff_dropout)
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None, key_mask: torch.Tensor | None,
                angles: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)  # macaron: two half-step feed-forwards around attention and convolution
        x = x + self.attn(x, key_mask, angles)
        x = x + self.conv(x, frame_mask)
        x = x + 0.5 * self.ff2(x)
        return self.post_norm(x)


class Conformer(nn.Module):
    """`depth` Conformer blocks sharing one rotary embedding over the head dimension."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int = 4,
                 conv_expansion_factor: int = 2, conv_kernel_size: int = 31, attn_dropout: float = 0.0,
                 ff_dropout: float = 0.0, conv_dropout: float = 0.0, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.layers = nn.ModuleList(
            ConformerBlock(dim, heads, dim_head, ff_mult, conv_expansion_factor, conv_kernel_size, attn_dropout,
                           ff_dropout, conv_dropout, attn_implementation)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`x` [B, T, D], `frame_mask` Bool [B, T] (True = real frame) -> [B, T, D]."""
        angles = self.rotary_emb(x.shape[1], x.device)
        key_mask = None if frame_mask is None else padding_to_attention_mask(frame_mask)
        for block in self.layers:
            x = block(x, frame_mask, key_mask, angles)
        return x
