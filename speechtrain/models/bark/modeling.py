"""Bark's three GPT-style sub-models with transformers' parameter names (`BarkSemanticModel`, `BarkCoarseModel`,
`BarkFineModel`), so their state dicts load as they are.

The semantic and coarse models are one causal decoder (`BarkCausalModel`); the fine model is the same stack
without the causal mask, reading the sum of the embeddings of the codebooks up to the one it predicts. The KV cache
is a plain list of `(key, value)` tuples, one per layer, each `[batch, heads, time, head_dim]`, returned to the
caller and never kept in the modules. transformers' `layers.N.attn.bias` causal-mask buffers are not kept either
(`hub.py` drops and re-creates them): `attend` builds the mask.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.attention import attend, padding_to_attention_mask
from speechtrain.layers.transformer import init_weights
from speechtrain.models.bark.config import BarkSubModelConfig

LayerCache = tuple[torch.Tensor, torch.Tensor]


class BarkAttention(nn.Module):
    """Multi-head self-attention with one fused `att_proj` for query, key and value (nanoGPT's `c_attn`)."""

    def __init__(self, config: BarkSubModelConfig, is_causal: bool):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.hidden_size // config.num_heads
        self.dropout, self.is_causal = config.dropout, is_causal
        self.attn_implementation = config.attn_implementation
        self.att_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                past: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache]:
        """`[B, T, d]` -> `[B, T, d]` and this layer's keys/values (earlier ones from `past` first)."""
        batch, time, width = x.shape
        q, k, v = (part.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
                   for part in self.att_proj(x).split(width, dim=2))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = attend(q, k, v, mask=mask, is_causal=self.is_causal, dropout_p=self.dropout if self.training else 0.0,
                     implementation=self.attn_implementation)
        out = out.transpose(1, 2).reshape(batch, time, width)  # [B, T, H*Dh]
        return F.dropout(self.out_proj(out), p=self.dropout, training=self.training), (k, v)


class BarkMLP(nn.Module):
    def __init__(self, config: BarkSubModelConfig):
        super().__init__()
        self.in_proj = nn.Linear(config.hidden_size, 4 * config.hidden_size, bias=config.bias)
        self.out_proj = nn.Linear(4 * config.hidden_size, config.hidden_size, bias=config.bias)
        self.gelu = nn.GELU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out_proj(self.gelu(self.in_proj(x))))


class BarkBlock(nn.Module):
    """Pre-norm attention + MLP. The layer-norm bias follows `config.bias` only in the causal models (Bark's
    choice); the fine model always has it."""

    def __init__(self, config: BarkSubModelConfig, is_causal: bool):
        super().__init__()
        norm_bias = config.bias if is_causal else True
        self.layernorm_1 = nn.LayerNorm(config.hidden_size, bias=norm_bias)
        self.attn = BarkAttention(config, is_causal)
        self.layernorm_2 = nn.LayerNorm(config.hidden_size, bias=norm_bias)
        self.mlp = BarkMLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                past: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache]:
        h, cache = self.attn(self.layernorm_1(x), mask, past)
        x = x + h
        return x + self.mlp(self.layernorm_2(x)), cache


class BarkTransformer(nn.Module):
    """What the causal and the fine model share: positions, the blocks and the final layer norm. Subclasses add
    their token embeddings and heads."""

    block_classes: ClassVar[tuple[type[nn.Module], ...]] = (BarkBlock,)  # FSDP and activation-checkpointing units

    def __init__(self, config: BarkSubModelConfig, is_causal: bool):
        super().__init__()
        self.config = config
        self.position_embeds_layer = nn.Embedding(config.block_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(BarkBlock(config, is_causal) for _ in range(config.num_layers))
        self.layernorm_final = nn.LayerNorm(config.hidden_size, bias=config.bias if is_causal else True)

    def run_layers(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   past: list[LayerCache] | None = None) -> tuple[torch.Tensor, list[LayerCache]]:
        """Token embeddings `[B, T, d]` at positions after the cached ones -> final hidden states `[B, T, d]` and
        the updated cache. `attention_mask` is `[B, past + T]`, 1/True = real token."""
        past_length = 0 if past is None else past[0][0].shape[2]
        batch, time, _ = embeds.shape
        if past_length + time > self.config.block_size:
            raise ValueError(f"{past_length} cached + {time} new positions exceed block_size={self.config.block_size}")
        if attention_mask is not None and attention_mask.shape != (batch, past_length + time):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                             f"{(batch, past_length + time)} (batch, cached + new tokens)")
        positions = torch.arange(past_length, past_length + time, device=embeds.device)
        x = self.drop(embeds + self.position_embeds_layer(positions))
        mask = None if attention_mask is None else padding_to_attention_mask(attention_mask)
        cache = []
        for index, layer in enumerate(self.layers):
            x, layer_cache = layer(x, mask, None if past is None else past[index])
            cache.append(layer_cache)
        return self.layernorm_final(x), cache


class BarkCausalModel(BarkTransformer):
    """The semantic (text -> semantic tokens) and coarse (semantic -> 2 codebooks) models: a causal GPT."""

    def __init__(self, config: BarkSubModelConfig):
        if config.is_fine:
            raise ValueError("BarkCausalModel is the semantic/coarse model; build BarkFineModel for fine_acoustics")
        super().__init__(config, is_causal=True)
        self.input_embeds_layer = nn.Embedding(config.input_vocab_size, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.output_vocab_size, bias=False)
        self.apply(lambda module: init_weights(module, config.initializer_range))

    def embed_merged_context(self, input_ids: torch.Tensor, context_length: int = 256) -> torch.Tensor:
        """Bark's semantic prompt: `[B, 2 * context + rest]` ids (text, semantic history, then the infer token and
        semantic tokens) -> `[B, context + rest, d]` embeddings whose first `context` rows are text + history
        embeddings summed position by position, as suno-ai/bark's `merge_context` and transformers'
        `BarkSemanticModel.generate` do."""
        if input_ids.shape[1] <= 2 * context_length:
            raise ValueError(f"a merged-context input needs more than {2 * context_length} ids (text, history, infer "
                             f"token), got {input_ids.shape[1]}")
        embeds = self.input_embeds_layer(input_ids)  # [B, T, d]
        merged = embeds[:, :context_length] + embeds[:, context_length : 2 * context_length]
        return torch.cat([merged, embeds[:, 2 * context_length :]], dim=1)  # [B, T - context, d]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past: list[LayerCache] | None = None,
        input_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """`input_ids` `[B, T]` (or `input_embeds` `[B, T, d]`, e.g. `embed_merged_context`) after the `past`
        cached positions -> logits `[B, T, output_vocab_size]` and the cache including these positions."""
        if (input_ids is None) == (input_embeds is None):
            raise ValueError("pass exactly one of input_ids and input_embeds")
        embeds = self.input_embeds_layer(input_ids) if input_embeds is None else input_embeds
        hidden, cache = self.run_layers(embeds, attention_mask, past)
        return self.lm_head(hidden), cache


class BarkFineModel(BarkTransformer):
    """The fine model: non-causal, one embedding table per codebook and one head per predicted codebook
    (`lm_heads[i]` predicts codebook `n_codes_given + i`; with `tie_word_embeddings` it shares the weight of
    `input_embeds_layers[i + 1]`, as transformers ties them)."""

    def __init__(self, config: BarkSubModelConfig):
        if not config.is_fine:
            raise ValueError(f"BarkFineModel needs model_type='fine_acoustics', got {config.model_type!r}")
        super().__init__(config, is_causal=False)
        self.input_embeds_layers = nn.ModuleList(
            nn.Embedding(config.input_vocab_size, config.hidden_size) for _ in range(config.n_codes_total))
        self.lm_heads = nn.ModuleList(nn.Linear(config.hidden_size, config.output_vocab_size, bias=False)
                                      for _ in range(config.n_codes_given, config.n_codes_total))
        self.apply(lambda module: init_weights(module, config.initializer_range))
        self.tie_weights()

    def tied_keys(self) -> list[str]:
        """State-dict keys that are copies of embedding weights (absent from transformers' files)."""
        if not self.config.tie_word_embeddings:
            return []
        return [f"lm_heads.{index}.weight" for index in range(len(self.lm_heads))]

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            for index, head in enumerate(self.lm_heads):
                head.weight = self.input_embeds_layers[index + 1].weight

    def forward(self, codebook_idx: int | torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[B, T, output_vocab_size]` of codebook `codebook_idx` (an int, or one per row `[B]`) from
        `input_ids` `[B, T, n_codes_total]`, whose codebooks `0..codebook_idx` are embedded and summed."""
        given, total = self.config.n_codes_given, self.config.n_codes_total
        if input_ids.dim() != 3 or input_ids.shape[2] != total:
            raise ValueError(f"input_ids must be [batch, time, {total}], got shape {tuple(input_ids.shape)}")
        message = f"codebook_idx must be in [{given}, {total}) (codebooks below {given} come from the coarse model)"
        per_row = isinstance(codebook_idx, torch.Tensor) and codebook_idx.dim() > 0
        if not per_row:
            codebook_idx = int(codebook_idx)  # a Python int (or a CPU scalar): checked here, never sent to the device
            if not given <= codebook_idx < total:
                raise ValueError(f"{message}, got {codebook_idx}")
        elif codebook_idx.device.type == "cpu":
            if bool(((codebook_idx < given) | (codebook_idx >= total)).any()):
                raise ValueError(f"{message}, got {codebook_idx.tolist()}")
        else:  # checked on the device, without waiting for it (printing the values would)
            torch._assert_async(((codebook_idx >= given) & (codebook_idx < total)).all(), message)
        if per_row:
            codebook_idx = codebook_idx.to(input_ids.device, non_blocking=True)  # [B]
        embeds = torch.stack([layer(input_ids[:, :, index]) for index, layer in enumerate(self.input_embeds_layers)],
                             dim=-1)  # [B, T, d, n_codes]
        positions = torch.arange(total, device=input_ids.device)
        used = positions <= (codebook_idx.reshape(-1, 1, 1, 1) if per_row else codebook_idx)
        hidden, _ = self.run_layers((embeds * used).sum(dim=-1), attention_mask)  # used: [B, 1, 1, n] or [n]
        if not per_row:
            return self.lm_heads[codebook_idx - given](hidden)
        heads = torch.stack([head.weight for head in self.lm_heads])[codebook_idx - given]  # [B, V, d]
        return torch.einsum("btd,bvd->btv", hidden, heads)
