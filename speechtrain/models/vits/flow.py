"""The normalizing flow between the posterior latent z and the prior's space z_p: mean-only affine couplings
(volume preserving, so no log-determinant) with a channel flip after each."""

from __future__ import annotations

import torch
from torch import nn

from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.vits.posterior_encoder import VitsWaveNet


class VitsResidualCouplingLayer(nn.Module):
    """Shifts the second half of the channels by a WaveNet function of the first half."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.half_channels = config.flow_size // 2
        self.conv_pre = nn.Conv1d(self.half_channels, config.hidden_size, 1)
        self.wavenet = VitsWaveNet(config, num_layers=config.prior_encoder_num_wavenet_layers)
        self.conv_post = nn.Conv1d(config.hidden_size, self.half_channels, 1)
        nn.init.zeros_(self.conv_post.weight)  # the flow starts as the identity
        nn.init.zeros_(self.conv_post.bias)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        """`[B, flow_size, T]` -> `[B, flow_size, T]`; `reverse` undoes the shift."""
        first_half, second_half = x.split(self.half_channels, dim=1)
        h = self.wavenet(self.conv_pre(first_half) * padding_mask, padding_mask, speaker_embedding)
        shift = self.conv_post(h) * padding_mask
        second_half = (second_half - shift if reverse else shift + second_half) * padding_mask
        return torch.cat([first_half, second_half], dim=1)


class VitsResidualCouplingBlock(nn.Module):
    def __init__(self, config: VitsConfig):
        super().__init__()
        self.flows = nn.ModuleList(VitsResidualCouplingLayer(config) for _ in range(config.prior_encoder_num_flows))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        """z `[B, flow_size, T]` -> z_p (training), or z_p -> z with `reverse` (synthesis)."""
        if not reverse:
            for flow in self.flows:
                x = flow(x, padding_mask, speaker_embedding).flip(1)
        else:
            for flow in reversed(self.flows):
                x = flow(x.flip(1), padding_mask, speaker_embedding, reverse=True)
        return x
