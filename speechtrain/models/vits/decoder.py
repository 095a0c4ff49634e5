"""The HiFi-GAN generator (Kong et al. 2020) that turns latent frames into a waveform.

The upsampling and residual-block convolutions are weight-normalised, as in the original VITS training code.
transformers' `VitsHifiGan` keeps them plain (inference only); `hub.py` folds and unfolds the weight norm so
checkpoints carry transformers' names (`decoder.upsampler.0.weight`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from speechtrain.models.vits.config import VitsConfig


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def dilated_convolutions(channels: int, kernel_size: int, dilations: list[int]) -> nn.ModuleList:
    """One weight-normed, length-preserving convolution per dilation: the dilated half of either block type."""
    return nn.ModuleList(
        weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d)))
        for d in dilations
    )


class HifiGanResidualBlock(nn.Module):
    """Pairs of (dilated, plain) convolutions with leaky ReLUs and a residual connection around each pair."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int], leaky_relu_slope: float):
        super().__init__()
        self.leaky_relu_slope = leaky_relu_slope
        self.convs1 = dilated_convolutions(channels, kernel_size, dilations)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size)))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            h = conv1(F.leaky_relu(x, self.leaky_relu_slope))
            x = x + conv2(F.leaky_relu(h, self.leaky_relu_slope))
        return x


class HifiGanResidualBlock2(nn.Module):
    """HiFi-GAN V2's lighter block (Piper's x_low, low and medium voices): one dilated convolution per dilation,
    each with a leaky ReLU before it and a residual connection around it. transformers' `VitsHifiGan` has only
    the V1 block, so layouts with this one export to Piper (`--format piper`) rather than to transformers."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int], leaky_relu_slope: float):
        super().__init__()
        self.leaky_relu_slope = leaky_relu_slope
        self.convs = dilated_convolutions(channels, kernel_size, dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, self.leaky_relu_slope))
        return x


RESIDUAL_BLOCKS = {1: HifiGanResidualBlock, 2: HifiGanResidualBlock2}


class VitsHifiGan(nn.Module):
    """Transposed-convolution upsampling by `prod(upsample_rates)`, each stage followed by the average of
    multi-receptive-field residual blocks (of `resblock_type` 1 or 2, as HiFi-GAN's V1 and V2)."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.leaky_relu_slope = config.leaky_relu_slope
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(config.flow_size, config.upsample_initial_channel, kernel_size=7, padding=3)
        self.upsampler = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block_class = RESIDUAL_BLOCKS[config.resblock_type]
        for i, (rate, kernel_size) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            channels = config.upsample_initial_channel // 2 ** (i + 1)
            self.upsampler.append(weight_norm(nn.ConvTranspose1d(
                2 * channels, channels, kernel_size, stride=rate, padding=(kernel_size - rate) // 2
            )))
            for block_kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block_class(channels, block_kernel, dilations, self.leaky_relu_slope))
        self.conv_post = nn.Conv1d(channels, 1, kernel_size=7, padding=3, bias=False)
        if config.speaker_embedding_size:
            self.cond = nn.Conv1d(config.speaker_embedding_size, config.upsample_initial_channel, 1)

    def forward(self, latents: torch.Tensor, speaker_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, flow_size, T]` (+ `[B or 1, E, 1]`) -> waveform `[B, 1, T * prod(upsample_rates)]` in [-1, 1]."""
        x = self.conv_pre(latents)
        if speaker_embedding is not None:
            x = x + self.cond(speaker_embedding)
        for i, upsample in enumerate(self.upsampler):
            x = upsample(F.leaky_relu(x, self.leaky_relu_slope))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as the original
        return torch.tanh(x)
