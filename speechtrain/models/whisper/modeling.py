"""Whisper (Radford et al. 2022) as plain torch modules whose parameter names equal transformers', so a
Hugging Face state dict loads without renaming. Leaf modules first, root last. The attention, the layers, the
layer loops (with the decoder's KV cache) and the root class's interface are the shared ones of
`speechtrain.layers.transformer`; this file holds what is Whisper's own: the convolutional front end, the
sinusoidal encoder positions and the learned decoder ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.transformer import (
    Attention,
    DecoderLayer,
    EncoderDecoderForConditionalGeneration,
    EncoderLayer,
    TransformerDecoder,
    TransformerEncoder,
)
from speechtrain.models.whisper.config import WhisperConfig


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """`[length, channels]` sinusoidal positions of the encoder (sin half, then cos half)."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


class WhisperAttention(Attention):
    """`k_proj` has no bias, as in openai/whisper; q is scaled before the product, in transformers' order, for
    bit-closer parity."""

    key_bias = False
    scale_query_first = True


class WhisperEncoderLayer(EncoderLayer):
    """Pre-norm self-attention + feed-forward block."""

    attention_class = WhisperAttention


class WhisperDecoderLayer(DecoderLayer):
    """Causal self-attention, cross-attention to the encoder, feed-forward."""

    attention_class = WhisperAttention


class WhisperEncoder(TransformerEncoder):
    """Two convolutions (the second halves the frame rate), sinusoidal positions, transformer layers."""

    def __init__(self, config: WhisperConfig, attn_implementation: str):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        self.embed_positions.requires_grad_(False)
        self.build_layers(WhisperEncoderLayer, attn_implementation)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """`[B, n_mels, 2 * max_source_positions]` log-mel features -> `[B, max_source_positions, d]`."""
        expected_frames = 2 * self.config.max_source_positions
        if input_features.dim() != 3 or input_features.shape[1:] != (self.config.num_mel_bins, expected_frames):
            raise ValueError(
                f"Whisper expects input_features of shape [batch, {self.config.num_mel_bins}, {expected_frames}] "
                f"(num_mel_bins, 2 * max_source_positions), got {tuple(input_features.shape)}; "
                f"pad or trim the log-mel features to {expected_frames} frames"
            )
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, S, d]
        x = F.dropout(x + self.embed_positions.weight, p=self.config.dropout, training=self.training)
        return self.run_layers(x)


class WhisperDecoder(TransformerDecoder):
    """Token + learned position embeddings, causal transformer layers with cross-attention."""

    def __init__(self, config: WhisperConfig, attn_implementation: str):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_target_positions, config.d_model)
        self.build_layers(WhisperDecoderLayer, attn_implementation)

    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        """Token + learned position embeddings `[B, T, d]`; the positions end at `max_target_positions`."""
        time = input_ids.shape[1]
        if past_length + time > self.config.max_target_positions:
            raise ValueError(
                f"decoder positions {past_length}+{time} exceed max_target_positions="
                f"{self.config.max_target_positions}; shorten the labels or the number of decoding steps"
            )
        return self.embed_tokens(input_ids) + self.embed_positions.weight[past_length : past_length + time]


class WhisperForConditionalGeneration(EncoderDecoderForConditionalGeneration):
    """Whisper with its language-model head (`proj_out`, tied to the token embedding by default)."""

    output_head_name = "proj_out"
    encoder_class = WhisperEncoder
    decoder_class = WhisperDecoder

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation (`init_weights`) plus the sinusoidal encoder positions."""
        super()._init_weights(module)
        if isinstance(module, WhisperEncoder):
            module.embed_positions.weight.copy_(sinusoids(*module.embed_positions.weight.shape))

    def encode(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, n_mels, frames]` -> `[B, max_source_positions, d]`. Whisper ignores `attention_mask` (as
        transformers does): it was trained on 30 s windows padded with silence; `decode` ignores its
        `encoder_attention_mask` likewise."""
        return self.model.encoder(input_features)

    def finish_loading(self) -> None:
        """Assigned weights come with `requires_grad`: the sinusoidal encoder positions stay frozen."""
        self.model.encoder.embed_positions.requires_grad_(False)
