"""The VITS discriminator: HiFi-GAN's multi-period discriminator plus one waveform-scale discriminator.

Layers, sizes and parameter names follow the original (jaywalnut310/vits models.py), so its `D_*.pth`
checkpoints load through `load_original_state_dict`. Weight (or spectral) norm uses torch's
parametrizations, which name the original's `weight_g`/`weight_v` `parametrizations.weight.original0/1`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

LRELU_SLOPE = 0.1
PERIODS = (2, 3, 5, 7, 11)

# old-style (torch.nn.utils.weight_norm / spectral_norm) suffix -> parametrization suffix
WEIGHT_NORM_NAMES = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
SPECTRAL_NORM_NAMES = {"weight_orig": "parametrizations.weight.original", "weight_u": "parametrizations.weight.0._u",
                       "weight_v": "parametrizations.weight.0._v"}


CHANNEL_DIVISORS = (1, 2, 4, 8, 16)


def _normed(conv: nn.Module, use_spectral_norm: bool) -> nn.Module:
    return spectral_norm(conv) if use_spectral_norm else weight_norm(conv)


def _narrow(channels: int, divisor: int) -> int:
    """A hidden width divided by `channel_divisor` (the waveform's 1 channel stays 1)."""
    return max(1, channels // divisor)


def convolve(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Both discriminators' stack: leaky-ReLU convolutions, then `conv_post`; -> flattened logits `[B, positions]`
    and the feature map of every layer (the feature-matching loss compares them)."""
    feature_maps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        feature_maps.append(x)
    x = conv_post(x)
    feature_maps.append(x)
    return torch.flatten(x, 1, -1), feature_maps


class ScaleDiscriminator(nn.Module):
    """The original `DiscriminatorS`: strided grouped 1-D convolutions over the raw waveform."""

    def __init__(self, use_spectral_norm: bool = False, channel_divisor: int = 1):
        super().__init__()
        layers = [  # (in, out, kernel, stride, groups, padding)
            (1, 16, 15, 1, 1, 7), (16, 64, 41, 4, 4, 20), (64, 256, 41, 4, 16, 20), (256, 1024, 41, 4, 64, 20),
            (1024, 1024, 41, 4, 256, 20), (1024, 1024, 5, 1, 1, 2),
        ]
        d = channel_divisor
        self.convs = nn.ModuleList(
            _normed(nn.Conv1d(_narrow(i, d), _narrow(o, d), k, s, groups=_narrow(g, d), padding=p), use_spectral_norm)
            for i, o, k, s, g, p in layers
        )
        self.conv_post = _normed(nn.Conv1d(_narrow(1024, d), 1, 3, 1, padding=1), use_spectral_norm)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`[B, 1, samples]` -> logits `[B, positions]` and the feature map of every layer."""
        return convolve(self.convs, self.conv_post, waveform)


class PeriodDiscriminator(nn.Module):
    """The original `DiscriminatorP`: the waveform folded into `period` columns, convolved along time."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False,
                 channel_divisor: int = 1):
        super().__init__()
        self.period = period
        padding = (kernel_size - 1) // 2
        channels = [_narrow(c, channel_divisor) for c in (1, 32, 128, 512, 1024)]
        self.convs = nn.ModuleList(
            _normed(nn.Conv2d(c_in, c_out, (kernel_size, 1), (stride, 1), padding=(padding, 0)), use_spectral_norm)
            for c_in, c_out in zip(channels, channels[1:])
        )
        width = channels[-1]
        last = nn.Conv2d(width, width, (kernel_size, 1), 1, padding=(padding, 0))
        self.convs.append(_normed(last, use_spectral_norm))
        self.conv_post = _normed(nn.Conv2d(width, 1, (3, 1), 1, padding=(1, 0)), use_spectral_norm)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`[B, 1, samples]` -> logits `[B, positions]` and the feature map of every layer."""
        batch, channels, samples = waveform.shape
        if samples % self.period:  # reflect-pad to a whole number of periods
            waveform = F.pad(waveform, (0, self.period - samples % self.period), "reflect")
        folded = waveform.view(batch, channels, -1, self.period)  # [B, 1, samples / period, period]
        return convolve(self.convs, self.conv_post, folded)


class MultiPeriodDiscriminator(nn.Module):
    """The original VITS discriminator: `discriminators.0` is the scale discriminator, then one period
    discriminator per entry of `periods`. `use_spectral_norm` applies to all of them, as in the original.
    `channel_divisor` narrows every hidden layer (16: about 1/200 of the parameters) for CPU smoke runs;
    only the original widths (1) load original checkpoints."""

    block_classes: ClassVar[tuple[type[nn.Module], ...]] = (ScaleDiscriminator, PeriodDiscriminator)  # FSDP units

    def __init__(self, periods: Sequence[int] = PERIODS, use_spectral_norm: bool = False, channel_divisor: int = 1):
        super().__init__()
        if not periods or any(int(p) < 1 for p in periods):
            raise ValueError(f"periods={list(periods)} must be a non-empty list of positive integers")
        if channel_divisor not in CHANNEL_DIVISORS:
            raise ValueError(f"channel_divisor={channel_divisor} must be one of {CHANNEL_DIVISORS}")
        self.use_spectral_norm = use_spectral_norm
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(use_spectral_norm, channel_divisor)]
            + [PeriodDiscriminator(int(p), use_spectral_norm=use_spectral_norm, channel_divisor=channel_divisor)
               for p in periods]
        )

    def forward(
        self, real: torch.Tensor, fake: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Real and generated waveforms `[B, 1, samples]` -> (real logits, fake logits, real feature maps,
        fake feature maps), one entry per discriminator (feature maps: one tensor per layer)."""
        if real.dim() != 3 or real.shape[1] != 1 or real.shape != fake.shape:
            raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must both be [batch, 1, samples]")
        real_logits, fake_logits, real_feature_maps, fake_feature_maps = [], [], [], []
        for discriminator in self.discriminators:
            logits, feature_maps = discriminator(real)
            real_logits.append(logits)
            real_feature_maps.append(feature_maps)
            logits, feature_maps = discriminator(fake)
            fake_logits.append(logits)
            fake_feature_maps.append(feature_maps)
        return real_logits, fake_logits, real_feature_maps, fake_feature_maps

    def load_original_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Loads an original VITS discriminator: a `D_*.pth` checkpoint (its `model` entry is used) or its
        state dict, with old-style `weight_g`/`weight_v` (or spectral-norm `weight_orig`/`weight_u`/`weight_v`)
        names. Raises if keys are missing or left over, as `load_state_dict(strict=True)` does."""
        if "model" in state_dict and isinstance(state_dict["model"], Mapping):
            state_dict = state_dict["model"]
        renames = SPECTRAL_NORM_NAMES if self.use_spectral_norm else WEIGHT_NORM_NAMES
        converted = {}
        for key, value in state_dict.items():
            prefix, _, suffix = key.removeprefix("module.").rpartition(".")
            converted[f"{prefix}.{renames.get(suffix, suffix)}"] = value
        self.load_state_dict(converted)
