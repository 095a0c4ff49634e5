"""Duration predictors. Both take the (detached) text encoder states and expose the same two calls:
`log_durations(...)` for synthesis and `loss(...)` (per utterance, summed over tokens) for training, so the
model uses either without branching.

The stochastic one (VITS §2.3) is a flow over (duration, noise) pairs with neural spline couplings; training
maximises a variational lower bound on the likelihood of the integer durations, dequantised by a posterior flow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.splines import unconstrained_rational_quadratic_spline
from speechtrain.models.vits.config import VitsConfig


def gaussian_nll(x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Standard normal negative log-likelihood of `[B, C, T]`, summed over unmasked entries -> `[B]`."""
    return torch.sum(0.5 * (math.log(2 * math.pi) + x**2) * padding_mask, dim=(1, 2))


def channel_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of a `[B, C, T]` tensor."""
    return norm(x.transpose(1, -1)).transpose(1, -1)


class VitsDilatedDepthSeparableConv(nn.Module):
    """Residual stack of dilated depthwise + pointwise convolutions (dilation kernel_size**i)."""

    def __init__(self, config: VitsConfig, dropout: float = 0.0):
        super().__init__()
        channels, kernel_size = config.hidden_size, config.duration_predictor_kernel_size
        self.dropout = dropout
        self.convs_dilated = nn.ModuleList()
        self.convs_pointwise = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(config.depth_separable_num_layers):
            dilation = kernel_size**i
            self.convs_dilated.append(nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dilation,
                                                padding=(kernel_size * dilation - dilation) // 2))
            self.convs_pointwise.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(nn.LayerNorm(channels))
            self.norms_2.append(nn.LayerNorm(channels))

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor, conditioning: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[B, C, T]` -> `[B, C, T]`; `conditioning` is added to the input."""
        if conditioning is not None:
            x = x + conditioning
        for conv_dilated, conv_pointwise, norm_1, norm_2 in zip(
            self.convs_dilated, self.convs_pointwise, self.norms_1, self.norms_2
        ):
            h = F.gelu(channel_layer_norm(norm_1, conv_dilated(x * padding_mask)))
            h = F.gelu(channel_layer_norm(norm_2, conv_pointwise(h)))
            x = x + F.dropout(h, p=self.dropout, training=self.training)
        return x * padding_mask


class VitsElementwiseAffine(nn.Module):
    """Learned per-channel affine map of a `[B, 2, T]` pair."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.translate = nn.Parameter(torch.zeros(config.depth_separable_channels, 1))
        self.log_scale = nn.Parameter(torch.zeros(config.depth_separable_channels, 1))

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor, conditioning: torch.Tensor | None = None,
        reverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the mapped `[B, 2, T]` and, forward only, the log-determinant `[B]`."""
        if reverse:
            return (x - self.translate) * torch.exp(-self.log_scale) * padding_mask, None
        y = (self.translate + torch.exp(self.log_scale) * x) * padding_mask
        return y, torch.sum(self.log_scale * padding_mask, dim=(1, 2))


class VitsConvFlow(nn.Module):
    """Coupling layer: the second channel goes through a rational-quadratic spline whose knots are predicted
    from the first channel (and the conditioning)."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.filter_channels = config.hidden_size
        self.half_channels = config.depth_separable_channels // 2
        self.num_bins = config.duration_predictor_flow_bins
        self.tail_bound = config.duration_predictor_tail_bound
        self.conv_pre = nn.Conv1d(self.half_channels, self.filter_channels, 1)
        self.conv_dds = VitsDilatedDepthSeparableConv(config)
        self.conv_proj = nn.Conv1d(self.filter_channels, self.half_channels * (3 * self.num_bins - 1), 1)
        nn.init.zeros_(self.conv_proj.weight)  # uniform bins and unit slopes: the flow starts as the identity
        nn.init.zeros_(self.conv_proj.bias)

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor, conditioning: torch.Tensor | None = None,
        reverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, 2, T]` -> `[B, 2, T]` and, forward only, the log-determinant `[B]`."""
        first_half, second_half = x.split(self.half_channels, dim=1)
        h = self.conv_dds(self.conv_pre(first_half), padding_mask, conditioning)
        h = self.conv_proj(h) * padding_mask  # [B, half * (3 * bins - 1), T]
        batch, channels, length = first_half.shape
        h = h.reshape(batch, channels, -1, length).permute(0, 1, 3, 2)  # [B, half, T, 3 * bins - 1]
        widths = h[..., : self.num_bins] / math.sqrt(self.filter_channels)
        heights = h[..., self.num_bins : 2 * self.num_bins] / math.sqrt(self.filter_channels)
        derivatives = h[..., 2 * self.num_bins :]
        second_half, log_abs_det = unconstrained_rational_quadratic_spline(
            second_half, widths, heights, derivatives, reverse=reverse, tail_bound=self.tail_bound
        )
        y = torch.cat([first_half, second_half], dim=1) * padding_mask
        return y, None if reverse else torch.sum(log_abs_det * padding_mask, dim=(1, 2))


def run_flows(
    flows: nn.ModuleList, x: torch.Tensor, padding_mask: torch.Tensor, conditioning: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward (training) direction of the original VITS: the affine map, then each ConvFlow followed by a
    channel flip. Returns the output and the summed log-determinant `[B]`."""
    log_det_total = 0
    for flow in flows:
        x, log_det = flow(x, padding_mask, conditioning)
        log_det_total = log_det_total + log_det
        if isinstance(flow, VitsConvFlow):
            x = x.flip(1)
    return x, log_det_total


class VitsStochasticDurationPredictor(nn.Module):
    def __init__(self, config: VitsConfig):
        super().__init__()
        channels = config.hidden_size
        self.conv_pre = nn.Conv1d(channels, channels, 1)
        self.conv_proj = nn.Conv1d(channels, channels, 1)
        self.conv_dds = VitsDilatedDepthSeparableConv(config, dropout=config.duration_predictor_dropout)
        if config.speaker_embedding_size:
            self.cond = nn.Conv1d(config.speaker_embedding_size, channels, 1)
        self.flows = nn.ModuleList(
            [VitsElementwiseAffine(config), *(VitsConvFlow(config) for _ in range(config.duration_predictor_num_flows))]
        )
        self.post_conv_pre = nn.Conv1d(1, channels, 1)
        self.post_conv_proj = nn.Conv1d(channels, channels, 1)
        self.post_conv_dds = VitsDilatedDepthSeparableConv(config, dropout=config.duration_predictor_dropout)
        self.post_flows = nn.ModuleList(
            [VitsElementwiseAffine(config), *(VitsConvFlow(config) for _ in range(config.duration_predictor_num_flows))]
        )

    def _text_conditioning(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.conv_pre(hidden.detach())  # durations do not train the text encoder
        if speaker_embedding is not None:
            x = x + self.cond(speaker_embedding.detach())
        return self.conv_proj(self.conv_dds(x, padding_mask)) * padding_mask

    def log_durations(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """Samples log-durations `[B, 1, T]` by running the flows backwards from scaled Gaussian noise.

        `hidden` `[B, d, T]`, `padding_mask` `[B, 1, T]`, `speaker_embedding` `[B or 1, E, 1]`.
        """
        conditioning = self._text_conditioning(hidden, padding_mask, speaker_embedding)
        batch, _, length = hidden.shape
        z = torch.randn(batch, 2, length, device=hidden.device, dtype=hidden.dtype) * noise_scale
        return self.reverse_flows(z, padding_mask, conditioning)[:, :1]

    def reverse_flows(self, z: torch.Tensor, padding_mask: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """Inverse of `run_flows(self.flows, ...)` on the duration channel: `[B, 2, T]` -> `[B, 2, T]`. The first
        ConvFlow is skipped: it only transforms the noise channel, which synthesis discards."""
        for flow in [*reversed(self.flows[2:]), self.flows[0]]:
            z, _ = flow(z.flip(1), padding_mask, conditioning, reverse=True)
        return z

    def loss(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, durations: torch.Tensor,
        speaker_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Negative variational lower bound of the integer `durations` `[B, 1, T]` -> `[B]`, in nats.

        Dequantisation: u in (0, 1) and the noise channel nu are drawn from the posterior flow q(u, nu | d, text);
        d - u is then mapped through log and the main flows to a standard normal.
        """
        conditioning = self._text_conditioning(hidden, padding_mask, speaker_embedding)
        h = self.post_conv_proj(self.post_conv_dds(self.post_conv_pre(durations), padding_mask)) * padding_mask
        batch, _, length = durations.shape
        noise = torch.randn(batch, 2, length, device=durations.device, dtype=durations.dtype) * padding_mask
        z_q, log_det_q = run_flows(self.post_flows, noise, padding_mask, conditioning + h)
        u_logits, nu = z_q.split(1, dim=1)  # [B, 1, T] each
        log_det_q = log_det_q + torch.sum((F.logsigmoid(u_logits) + F.logsigmoid(-u_logits)) * padding_mask, (1, 2))
        log_q = -gaussian_nll(noise, padding_mask) - log_det_q
        log_durations = torch.log(torch.clamp_min((durations - torch.sigmoid(u_logits)) * padding_mask, 1e-5))
        log_durations = log_durations * padding_mask
        z, log_det = run_flows(self.flows, torch.cat([log_durations, nu], dim=1), padding_mask, conditioning)
        log_det = log_det - torch.sum(log_durations, dim=(1, 2))  # the log map's Jacobian
        return gaussian_nll(z, padding_mask) - log_det + log_q


class VitsDurationPredictor(nn.Module):
    """Deterministic predictor: two conv + ReLU + LayerNorm blocks regressing the log-duration."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        kernel_size, channels = config.duration_predictor_kernel_size, config.duration_predictor_filter_channels
        self.dropout = config.duration_predictor_dropout
        self.conv_1 = nn.Conv1d(config.hidden_size, channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.conv_2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.proj = nn.Conv1d(channels, 1, 1)
        if config.speaker_embedding_size:
            self.cond = nn.Conv1d(config.speaker_embedding_size, config.hidden_size, 1)

    def log_durations(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """`hidden` `[B, d, T]`, `padding_mask` `[B, 1, T]` -> log-durations `[B, 1, T]` (`noise_scale` unused)."""
        x = hidden.detach()  # durations do not train the text encoder
        if speaker_embedding is not None:
            x = x + self.cond(speaker_embedding.detach())
        for conv, norm in ((self.conv_1, self.norm_1), (self.conv_2, self.norm_2)):
            x = channel_layer_norm(norm, torch.relu(conv(x * padding_mask)))
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.proj(x * padding_mask) * padding_mask

    def loss(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, durations: torch.Tensor,
        speaker_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared error of the log-durations, summed over tokens -> `[B]`."""
        target = torch.log(durations + 1e-6) * padding_mask
        predicted = self.log_durations(hidden, padding_mask, speaker_embedding)
        return torch.sum((predicted - target) ** 2, dim=(1, 2))
