"""The VITS text encoder (prior encoder): a post-norm transformer with windowed relative positions (Shaw et al.
2018, as in jaywalnut310/vits) whose output is projected to the prior's means and log-deviations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.attention import attend, padding_to_attention_mask
from speechtrain.models.vits.config import VitsConfig

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def relative_to_absolute(x: torch.Tensor) -> torch.Tensor:
    """Logits per relative offset `[B, H, T, 2T-1]` -> per key position `[B, H, T, T]` (pad-and-reshape skew)."""
    batch, heads, length, _ = x.shape
    x = F.pad(x, (0, 1)).view(batch, heads, length * 2 * length)  # [B, H, T * 2T]
    x = F.pad(x, (0, length - 1)).view(batch, heads, length + 1, 2 * length - 1)
    return x[:, :, :length, length - 1 :]


def absolute_to_relative(x: torch.Tensor) -> torch.Tensor:
    """Weights per key position `[B, H, T, T]` -> per relative offset `[B, H, T, 2T-1]`."""
    batch, heads, length, _ = x.shape
    x = F.pad(x, (0, length - 1)).view(batch, heads, length * (2 * length - 1))
    x = F.pad(x, (length, 0)).view(batch, heads, length, 2 * length)
    return x[:, :, :, 1:]


class VitsAttention(nn.Module):
    """Self-attention whose keys and values also get a learned embedding of the offset `j - i`, clipped to
    `±window_size` (shared by all heads). Without a window it is plain attention through `layers.attention`, with
    the config's `attn_implementation`; the relative-position scores have no fused kernel and are computed eagerly."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.window_size = config.window_size
        self.dropout = config.attention_dropout
        self.attn_implementation = config.attn_implementation
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        for projection in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(projection.weight)
        if self.window_size:
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * self.window_size + 1, self.head_dim) * self.scaling)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * self.window_size + 1, self.head_dim) * self.scaling)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]

    def _relative_embeddings(self, embeddings: torch.Tensor, length: int) -> torch.Tensor:
        """`[1, 2W+1, Dh]` -> `[1, 2T-1, Dh]`: offsets `-(T-1)..T-1`, zero beyond the window. Padded by T-1 on
        both sides and cut from W on (the original pads and cuts by branches on T, which a traced ONNX export
        would freeze at the example's length)."""
        padded = F.pad(embeddings, (0, 0, length - 1, length - 1))  # [1, 2W+1 + 2(T-1), Dh], offset 0 at W+T-1
        return padded[:, self.window_size : self.window_size + 2 * length - 1]

    def forward(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, T, d]` -> `[B, T, d]`; `key_mask` is boolean `[B, 1, 1, T]`, True at real tokens."""
        batch, time, _ = hidden_states.shape
        dropout = self.dropout if self.training else 0.0
        q = self._heads(self.q_proj(hidden_states) * self.scaling)
        k, v = self._heads(self.k_proj(hidden_states)), self._heads(self.v_proj(hidden_states))
        if not self.window_size:
            out = attend(q, k, v, mask=key_mask, scale=1.0, dropout_p=dropout, implementation=self.attn_implementation)
        else:
            rel_k = self._relative_embeddings(self.emb_rel_k, time)  # [1, 2T-1, Dh]
            scores = q @ k.transpose(-2, -1) + relative_to_absolute(q @ rel_k.transpose(-2, -1))  # [B, H, T, T]
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
            probs = F.dropout(scores.float().softmax(dim=-1).to(q.dtype), p=dropout, training=self.training)
            rel_v = self._relative_embeddings(self.emb_rel_v, time)
            out = probs @ v + absolute_to_relative(probs) @ rel_v  # [B, H, T, Dh]
        return self.out_proj(out.transpose(1, 2).reshape(batch, time, -1))


class VitsFeedForward(nn.Module):
    """Two 'same'-padded convolutions over time; padded frames are zeroed before each."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.conv_1 = nn.Conv1d(config.hidden_size, config.ffn_dim, config.ffn_kernel_size)
        self.conv_2 = nn.Conv1d(config.ffn_dim, config.hidden_size, config.ffn_kernel_size)
        self.act_fn = ACTIVATIONS[config.hidden_act]()
        self.dropout = config.activation_dropout
        self.padding = ((config.ffn_kernel_size - 1) // 2, config.ffn_kernel_size // 2)

    def forward(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """`[B, T, d]`, `padding_mask` `[B, T, 1]` -> `[B, T, d]`."""
        mask = padding_mask.transpose(1, 2)  # [B, 1, T]
        x = self.conv_1(F.pad(hidden_states.transpose(1, 2) * mask, self.padding))  # [B, ffn, T]
        x = F.dropout(self.act_fn(x), p=self.dropout, training=self.training)
        x = self.conv_2(F.pad(x * mask, self.padding)) * mask
        return x.transpose(1, 2)


class VitsEncoderLayer(nn.Module):
    """Post-norm attention + feed-forward block (as the original VITS)."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.attention = VitsAttention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = VitsFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = config.hidden_dropout

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        h = F.dropout(self.attention(x, key_mask), p=self.dropout, training=self.training)
        x = self.layer_norm(x + h)
        h = F.dropout(self.feed_forward(x, padding_mask), p=self.dropout, training=self.training)
        return self.final_layer_norm(x + h)


class VitsEncoder(nn.Module):
    def __init__(self, config: VitsConfig):
        super().__init__()
        self.layers = nn.ModuleList(VitsEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.layerdrop = config.layerdrop

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """`[B, T, d]`, `padding_mask` `[B, T, 1]` (1 = real token) -> `[B, T, d]`, zero at padding."""
        key_mask = padding_to_attention_mask(padding_mask[..., 0])
        x = x * padding_mask
        for layer in self.layers:
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x = layer(x, padding_mask, key_mask)
        return x * padding_mask


class VitsTextEncoder(nn.Module):
    """Token embedding (scaled by sqrt(d)), relative-position transformer, projection to the prior statistics."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.flow_size = config.flow_size
        # No padding_idx, as the original (jaywalnut310/vits models.py TextEncoder): the pad id is the interspersed
        # blank, about half of all input ids, and must train; padded positions are masked after the embedding.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        nn.init.normal_(self.embed_tokens.weight, 0.0, config.hidden_size**-0.5)
        self.encoder = VitsEncoder(config)
        self.project = nn.Conv1d(config.hidden_size, 2 * config.flow_size, kernel_size=1)

    def forward(
        self, input_ids: torch.Tensor, padding_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`input_ids` `[B, T]`, `padding_mask` `[B, T, 1]` -> hidden `[B, T, d]`, prior means and log standard
        deviations `[B, T, flow_size]` (transformers calls the latter `prior_log_variances`)."""
        x = self.embed_tokens(input_ids) * math.sqrt(self.embed_tokens.embedding_dim)
        hidden = self.encoder(x, padding_mask)
        stats = self.project(hidden.transpose(1, 2)).transpose(1, 2) * padding_mask  # [B, T, 2 * flow_size]
        prior_means, prior_log_stddevs = stats.split(self.flow_size, dim=2)
        return hidden, prior_means, prior_log_stddevs
