"""Whisper (Radford et al. 2022) as plain torch modules whose parameter names equal transformers', so a
Hugging Face state dict loads without renaming. Leaf modules first, root last.

The decoder's KV cache is a plain list returned to the caller, one `(self_k, self_v, cross_k, cross_v)`
tuple per layer, each `[batch, heads, time, head_dim]`: self-attention K/V grow by one step per call,
cross-attention K/V are computed from the encoder states once. Beam search reorders it with `index_select`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.attention import attend, check_implementation, padding_to_attention_mask
from speechtrain.models.whisper.config import WhisperConfig

LayerCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

ACTIVATION_FUNCTIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """`[length, channels]` sinusoidal positions of the encoder (sin half, then cos half)."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


class WhisperAttention(nn.Module):
    """Multi-head attention for both self- and cross-attention; `k_proj` has no bias, as in openai/whisper."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, attn_implementation: str,
                 is_causal: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout, self.is_causal = dropout, is_causal
        self.attn_implementation = check_implementation(attn_implementation)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`hidden_states` `[B, T, d]` attends to itself, or to `key_value_states` `[B, S, d]` (cross-attention).

        `past` holds earlier K/V: self-attention appends the new ones, cross-attention reuses them as they are.
        Returns the output `[B, T, d]` and the K/V to cache.
        """
        # q is scaled before the product (scale=1.0 below), in transformers' order, for bit-closer parity
        q = self._heads(self.q_proj(hidden_states) * self.scaling)
        if key_value_states is not None and past is not None:
            k, v = past
        else:
            source = hidden_states if key_value_states is None else key_value_states
            k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = attend(
            q, k, v, mask=mask, is_causal=self.is_causal, scale=1.0,
            dropout_p=self.dropout if self.training else 0.0, implementation=self.attn_implementation,
        )
        batch, _, time, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, time, -1)  # [B, T, H*Dh]
        return self.out_proj(out), (k, v)


class WhisperEncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward block."""

    def __init__(self, config: WhisperConfig, attn_implementation: str, num_heads: int, ffn_dim: int,
                 is_causal: bool = False):
        super().__init__()
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout
        self.self_attn = WhisperAttention(config.d_model, num_heads, config.attention_dropout,
                                          attn_implementation, is_causal=is_causal)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.activation_fn = ACTIVATION_FUNCTIONS[config.activation_function]()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def _residual(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return x + F.dropout(update, p=self.dropout, training=self.training)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation_fn(self.fc1(self.final_layer_norm(x)))
        h = F.dropout(h, p=self.activation_dropout, training=self.training)
        return self._residual(x, self.fc2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, S, d]` -> `[B, S, d]`; Whisper's encoder attends over all frames (no mask)."""
        h, _ = self.self_attn(self.self_attn_layer_norm(x))
        return self._feed_forward(self._residual(x, h))


class WhisperDecoderLayer(WhisperEncoderLayer):
    """Causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, config: WhisperConfig, attn_implementation: str):
        super().__init__(config, attn_implementation, config.decoder_attention_heads, config.decoder_ffn_dim,
                         is_causal=True)
        self.encoder_attn = WhisperAttention(config.d_model, config.decoder_attention_heads,
                                             config.attention_dropout, attn_implementation)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        x: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        """`x` `[B, T, d]` -> `[B, T, d]` and this layer's updated cache."""
        h, self_kv = self.self_attn(self.self_attn_layer_norm(x), mask=mask,
                                    past=None if cache is None else cache[:2])
        x = self._residual(x, h)
        h, cross_kv = self.encoder_attn(self.encoder_attn_layer_norm(x), key_value_states=encoder_hidden_states,
                                        past=None if cache is None else cache[2:])
        return self._feed_forward(self._residual(x, h)), (*self_kv, *cross_kv)


class WhisperEncoder(nn.Module):
    """Two convolutions (the second halves the frame rate), sinusoidal positions, transformer layers."""

    def __init__(self, config: WhisperConfig, attn_implementation: str):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(config, attn_implementation, config.encoder_attention_heads, config.encoder_ffn_dim)
            for _ in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(config.d_model)

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
        layerdrop = self.config.encoder_layerdrop if self.training else 0.0
        for layer in self.layers:
            if not (layerdrop > 0 and torch.rand(()) < layerdrop):
                x = layer(x)
        return self.layer_norm(x)


class WhisperDecoder(nn.Module):
    """Token + learned position embeddings, causal transformer layers with cross-attention."""

    def __init__(self, config: WhisperConfig, attn_implementation: str):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_target_positions, config.d_model)
        self.layers = nn.ModuleList(
            WhisperDecoderLayer(config, attn_implementation) for _ in range(config.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """`input_ids` `[B, T]` -> hidden states `[B, T, d]` and the updated cache (empty without `use_cache`).

        `attention_mask` `[B, past + T]` marks real tokens (1) and padding (0) over cached and new positions.
        Layers are dropped (`decoder_layerdrop`) only in training calls without `use_cache`.
        """
        past_length = 0 if cache is None else cache[0][0].shape[2]
        time = input_ids.shape[1]
        if past_length + time > self.config.max_target_positions:
            raise ValueError(
                f"decoder positions {past_length}+{time} exceed max_target_positions="
                f"{self.config.max_target_positions}; shorten the labels or the number of decoding steps"
            )
        if attention_mask is not None and attention_mask.shape != (input_ids.shape[0], past_length + time):
            raise ValueError(
                f"decoder attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"{(input_ids.shape[0], past_length + time)} (batch, cached + new tokens)"
            )
        positions = self.embed_positions.weight[past_length : past_length + time]
        x = F.dropout(self.embed_tokens(input_ids) + positions, p=self.config.dropout, training=self.training)
        mask = None if attention_mask is None else padding_to_attention_mask(attention_mask)
        layerdrop = self.config.decoder_layerdrop if self.training and not use_cache else 0.0
        new_cache = []
        for index, layer in enumerate(self.layers):
            if layerdrop > 0 and torch.rand(()) < layerdrop:
                continue
            x, layer_cache = layer(x, encoder_hidden_states, mask, None if cache is None else cache[index])
            new_cache.append(layer_cache)
        return self.layer_norm(x), new_cache if use_cache else []


class WhisperModel(nn.Module):
    """Holds the encoder and decoder under transformers' `model.` prefix; the root module drives them."""

    def __init__(self, config: WhisperConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.encoder = WhisperEncoder(config, attn_implementation)
        self.decoder = WhisperDecoder(config, attn_implementation)


class WhisperForConditionalGeneration(nn.Module):
    """Whisper with its language-model head (`proj_out`, tied to the token embedding by default)."""

    def __init__(self, config: WhisperConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.attn_implementation = check_implementation(attn_implementation)
        self.model = WhisperModel(config, attn_implementation)
        self.proj_out = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.tie_weights()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation: normal(0, init_std) weights, zero biases, sinusoidal encoder positions."""
        if isinstance(module, nn.Linear | nn.Conv1d):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, WhisperEncoder):
            module.embed_positions.weight.copy_(sinusoids(*module.embed_positions.weight.shape))

    def tie_weights(self) -> None:
        """Shares `proj_out.weight` with `model.decoder.embed_tokens.weight` when `tie_word_embeddings`."""
        if self.config.tie_word_embeddings:
            self.proj_out.weight = self.model.decoder.embed_tokens.weight

    def get_encoder(self) -> WhisperEncoder:
        """The encoder, e.g. to freeze it (transformers' name for this accessor)."""
        return self.model.encoder

    def encode(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, n_mels, frames]` -> `[B, max_source_positions, d]`. Whisper ignores `attention_mask` (as
        transformers does): it was trained on 30 s windows padded with silence."""
        return self.model.encoder(input_features)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """`decoder_input_ids` `[B, T]` (only the new tokens when `cache` is given) -> logits `[B, T, vocab]`
        and the cache to pass to the next call. `encoder_attention_mask` is ignored, as in `encode`."""
        hidden, cache = self.model.decoder(decoder_input_ids, encoder_hidden_states, decoder_attention_mask, cache)
        return self.proj_out(hidden), cache

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits `[B, T, vocab]` for `decoder_input_ids` `[B, T]`."""
        if decoder_input_ids is None:
            raise ValueError("WhisperForConditionalGeneration.forward needs decoder_input_ids [batch, tokens]")
        encoder_hidden_states = self.encode(input_features, attention_mask)
        hidden, _ = self.model.decoder(decoder_input_ids, encoder_hidden_states, decoder_attention_mask,
                                       use_cache=False)
        return self.proj_out(hidden)
