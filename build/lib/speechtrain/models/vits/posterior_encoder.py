"""The posterior encoder q(z | linear spectrogram) and the WaveNet stack it shares with the coupling flow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from speechtrain.models.vits.config import VitsConfig


class VitsWaveNet(nn.Module):
    """Non-causal WaveNet: dilated gated convolutions with residual and skip paths, optionally conditioned on a
    speaker embedding. Convolutions are weight-normalised, as in the original and in transformers."""

    def __init__(self, config: VitsConfig, num_layers: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.dropout = config.wavenet_dropout
        if config.speaker_embedding_size:
            conditioning_channels = 2 * self.hidden_size * num_layers  # a slice per layer
            self.cond_layer = weight_norm(nn.Conv1d(config.speaker_embedding_size, conditioning_channels, 1))
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(num_layers):
            dilation = config.wavenet_dilation_rate**i
            self.in_layers.append(weight_norm(nn.Conv1d(
                self.hidden_size, 2 * self.hidden_size, config.wavenet_kernel_size, dilation=dilation,
                padding=(config.wavenet_kernel_size * dilation - dilation) // 2,
            )))
            res_skip_channels = 2 * self.hidden_size if i < num_layers - 1 else self.hidden_size  # last: skip only
            self.res_skip_layers.append(weight_norm(nn.Conv1d(self.hidden_size, res_skip_channels, 1)))

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`x` `[B, hidden, T]` -> `[B, hidden, T]`; `padding_mask` `[B, 1, T]`, `speaker_embedding` `[B|1, E, 1]`."""
        output = torch.zeros_like(x)
        conditioning = None if speaker_embedding is None else self.cond_layer(speaker_embedding)  # [B, 2hL, 1]
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            h = in_layer(x)  # [B, 2h, T]
            if conditioning is not None:
                h = h + conditioning[:, 2 * i * self.hidden_size : 2 * (i + 1) * self.hidden_size]
            acts = torch.tanh(h[:, : self.hidden_size]) * torch.sigmoid(h[:, self.hidden_size :])
            res_skip = res_skip_layer(F.dropout(acts, p=self.dropout, training=self.training))
            if i < len(self.in_layers) - 1:
                x = (x + res_skip[:, : self.hidden_size]) * padding_mask
                output = output + res_skip[:, self.hidden_size :]
            else:
                output = output + res_skip
        return output * padding_mask


class VitsPosteriorEncoder(nn.Module):
    """Linear spectrogram -> Gaussian posterior over the latent z, and a sample from it (used in training only)."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.out_channels = config.flow_size
        self.conv_pre = nn.Conv1d(config.spectrogram_bins, config.hidden_size, 1)
        self.wavenet = VitsWaveNet(config, num_layers=config.posterior_encoder_num_wavenet_layers)
        self.conv_proj = nn.Conv1d(config.hidden_size, 2 * self.out_channels, 1)

    def forward(
        self, spectrogram: torch.Tensor, padding_mask: torch.Tensor, speaker_embedding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`spectrogram` `[B, bins, T]`, `padding_mask` `[B, 1, T]` -> sample z, mean m_q, log-deviation logs_q,
        each `[B, flow_size, T]`."""
        x = self.conv_pre(spectrogram) * padding_mask
        x = self.wavenet(x, padding_mask, speaker_embedding)
        stats = self.conv_proj(x) * padding_mask
        mean, log_stddev = stats.split(self.out_channels, dim=1)
        sample = (mean + torch.randn_like(mean) * log_stddev.exp()) * padding_mask
        return sample, mean, log_stddev
