"""Speech2Text (Wang et al. 2020, fairseq S2T) as plain torch modules whose parameter names equal transformers',
so a Hugging Face state dict loads without renaming. Leaf modules first, root last.

Input is `[batch, frames, n_mels]` Kaldi filterbanks with a `[batch, frames]` frame mask. Strided convolutions
subsample time (4x with two layers); the model maps the frame mask onto the subsampled axis itself, in `encode`
and again in `decode`, because `speechtrain.decoding` hands both the same frame-level mask.

The attention, the layers, the layer loops (with the decoder's KV cache) and the root class's interface are the
shared ones of `speechtrain.layers.transformer`; this file holds what is Speech2Text's own: the convolutional
subsampler, fairseq's sinusoidal positions with their padding offset, the embedding scale and the frame-mask
mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.transformer import (
    DecoderLayer,
    EncoderDecoderForConditionalGeneration,
    EncoderLayer,
    TransformerDecoder,
    TransformerEncoder,
)
from speechtrain.models.speech2text.config import Speech2TextConfig


def sinusoidal_positions(num_positions: int, channels: int, padding_idx: int) -> torch.Tensor:
    """`[num_positions, channels]` tensor2tensor sinusoids (sin half, then cos half) with row `padding_idx` zero,
    computed in the same operation order as transformers and fairseq, so the tables are bit-equal."""
    half = channels // 2
    inv_timescales = torch.exp(torch.arange(half, dtype=torch.int64).float() * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.int64).float()[:, None] * inv_timescales[None, :]
    table = F.pad(torch.cat([angles.sin(), angles.cos()], dim=1), (0, channels % 2))
    table[padding_idx] = 0
    return table


def make_positions(ids: torch.Tensor, padding_idx: int, past_length: int = 0) -> torch.Tensor:
    """fairseq's `make_positions`: entries that are not `padding_idx` count up from `padding_idx + 1 + past_length`,
    the others stay at `padding_idx` (the zero row)."""
    real = ids.ne(padding_idx).long()
    return (real.cumsum(dim=1) + past_length) * real + padding_idx


def subsampled_lengths(lengths: torch.Tensor | int, num_layers: int) -> torch.Tensor | int:
    """Frames left after `num_layers` convolutions of stride 2 with odd kernels and `kernel // 2` padding."""
    for _ in range(num_layers):
        lengths = (lengths - 1) // 2 + 1
    return lengths


class Speech2TextSinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal positions looked up by position id, offset by fairseq's `padding_idx + 1`.

    The table is a non-persistent buffer (not in the state dict, as in transformers). Longer sequences than it
    holds get a larger table computed for that call (transformers keeps the grown one; we leave module state alone
    so that DDP ranks keep equal buffers), so no input length is refused.
    """

    offset = 2

    def __init__(self, num_positions: int, embedding_dim: int, padding_idx: int):
        super().__init__()
        self.embedding_dim, self.padding_idx = embedding_dim, padding_idx
        self.register_buffer(
            "weights", sinusoidal_positions(num_positions + self.offset, embedding_dim, padding_idx), persistent=False
        )

    def reset_parameters(self, device: torch.device | str = "cpu") -> None:
        """Recomputes the table on `device`, e.g. after building the module on the meta device."""
        self.weights = sinusoidal_positions(self.weights.shape[0], self.embedding_dim, self.padding_idx).to(device)

    def forward(self, position_ids: torch.Tensor, max_position: int) -> torch.Tensor:
        """`[B, T]` position ids, none above `max_position` -> `[B, T, d]`."""
        table = self.weights
        if max_position >= table.shape[0]:
            table = sinusoidal_positions(max_position + self.offset, self.embedding_dim, self.padding_idx).to(table)
        return table[position_ids]


class Conv1dSubsampler(nn.Module):
    """Stride-2 convolutions, each followed by a GLU that halves the channels back."""

    def __init__(self, config: Speech2TextConfig):
        super().__init__()
        last = config.num_conv_layers - 1
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                config.input_size if i == 0 else config.conv_channels // 2,
                config.conv_channels if i < last else 2 * config.d_model,
                kernel_size=kernel,
                stride=2,
                padding=kernel // 2,
            )
            for i, kernel in enumerate(config.conv_kernel_sizes)
        )

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """`[B, T, n_features]` -> `[B, S, d_model]` with S = `subsampled_lengths(T)`."""
        x = input_features.transpose(1, 2)  # [B, n_features, T]
        for conv in self.conv_layers:
            x = F.glu(conv(x), dim=1)
        return x.transpose(1, 2)  # [B, S, d]


class Speech2TextEncoderLayer(EncoderLayer):
    """Pre-norm self-attention + feed-forward block; the shared `Attention`, a bias on every projection."""


class Speech2TextDecoderLayer(DecoderLayer):
    """Causal self-attention, cross-attention to the encoder, feed-forward."""


class Speech2TextEncoder(TransformerEncoder):
    """Convolutional subsampler, scaled embeddings + sinusoidal positions, transformer layers."""

    def __init__(self, config: Speech2TextConfig, attn_implementation: str):
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.conv = Conv1dSubsampler(config)
        self.embed_positions = Speech2TextSinusoidalPositionalEmbedding(
            config.max_source_positions, config.d_model, config.pad_token_id
        )
        self.build_layers(Speech2TextEncoderLayer, attn_implementation)

    def forward(self, input_features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, T, n_features]` filterbanks and the subsampled `[B, S]` mask (True = real) -> `[B, S, d]`."""
        x = self.embed_scale * self.conv(input_features)
        batch, time, _ = x.shape
        # fairseq and transformers number positions off the *padding* mask (1 = padded) with padding_idx as the
        # "pad" value: with the usual pad_token_id=1, real frames count up from 2 and padded frames get row 1 (zeros)
        padded = torch.zeros(batch, time, dtype=torch.long, device=x.device) if mask is None else (~mask).long()
        positions = make_positions(padded, self.config.pad_token_id)
        x = x + self.embed_positions(positions, self.config.pad_token_id + time)
        x = F.dropout(x, p=self.config.dropout, training=self.training)
        return self.run_layers(x, mask)


class Speech2TextDecoder(TransformerDecoder):
    """Scaled token embeddings + sinusoidal positions, causal transformer layers with cross-attention."""

    def __init__(self, config: Speech2TextConfig, attn_implementation: str):
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_positions = Speech2TextSinusoidalPositionalEmbedding(
            config.max_target_positions, config.d_model, config.pad_token_id
        )
        self.build_layers(Speech2TextDecoderLayer, attn_implementation)

    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        """Scaled token embeddings + sinusoidal positions `[B, T, d]`. Tokens equal to `pad_token_id` get the
        zero position, as in fairseq."""
        positions = make_positions(input_ids, self.config.pad_token_id, past_length)
        x = self.embed_scale * self.embed_tokens(input_ids)
        return x + self.embed_positions(positions, self.config.pad_token_id + past_length + input_ids.shape[1])


class Speech2TextForConditionalGeneration(EncoderDecoderForConditionalGeneration):
    """Speech2Text with its language-model head (`lm_head`, tied to the token embedding by default)."""

    output_head_name = "lm_head"
    encoder_class = Speech2TextEncoder
    decoder_class = Speech2TextDecoder

    def encoder_mask(self, frame_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The `[B, T]` frame mask (True = real frame) mapped onto the encoder's subsampled axis: `[B, S]` bool."""
        if frame_mask is None:
            return None
        if frame_mask.dim() != 2:
            raise ValueError(f"attention_mask must be a [batch, frames] frame mask, got {tuple(frame_mask.shape)}")
        lengths = subsampled_lengths(frame_mask.long().sum(dim=1), self.config.num_conv_layers)  # [B]
        steps = subsampled_lengths(frame_mask.shape[1], self.config.num_conv_layers)
        return torch.arange(steps, device=frame_mask.device) < lengths[:, None]

    def _encoder_inputs(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None):
        if input_features.dim() != 3 or input_features.shape[2] != self.config.input_size:
            raise ValueError(
                f"Speech2Text expects input_features of shape [batch, frames, {self.config.input_size}] "
                f"(frames first, input_feat_per_channel * input_channels last), got {tuple(input_features.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_features.shape[:2]:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected the frame mask "
                f"{tuple(input_features.shape[:2])} of input_features (the model subsamples it itself)"
            )
        return input_features, self.encoder_mask(attention_mask)

    def encode(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, T, n_features]` filterbanks and their `[B, T]` frame mask -> `[B, S, d]` encoder states."""
        return self.model.encoder(*self._encoder_inputs(input_features, attention_mask))

    def finish_loading(self) -> None:
        """The position tables are buffers outside the state dict: rebuilt after a meta-device build."""
        for module in self.modules():
            if isinstance(module, Speech2TextSinusoidalPositionalEmbedding):
                module.reset_parameters()
