"""The pre-norm transformer encoder-decoder pieces that Whisper and Speech2Text share (both are transformers'
BART-style models): attention with a KV cache, the encoder and decoder layers, the layer loops of the two
stacks, the decoder's forward pass and the root class (`encode`/`decode`/`forward`, weight tying, initialisation).
A family subclasses them to set what differs (the attention's bias and scaling order, its front end, embeddings
and positions, the name of its head) and keeps transformers' parameter names (`self_attn`, `fc1`, `proj_out`,
...), so its state dicts load as they are. Shared rather than kept as marked copies: the two families' code was
the same line for line apart from those points, and copies had already drifted (only Speech2Text checked the
mask given to `decode`); now a family file reads as the list of what makes that family different.

The decoder's KV cache is a plain list returned to the caller, one `(self_k, self_v, cross_k, cross_v)` tuple per
layer, each `[batch, heads, time, head_dim]`: self-attention K/V grow by one step per call, cross-attention K/V
are computed from the encoder states once. Beam search reorders it with `index_select`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from speechtrain.layers.attention import attend, attention_weights, check_implementation, padding_to_attention_mask
from speechtrain.layers.config_fields import (
    check_choice,
    check_divisible,
    check_positive_int,
    check_probability,
    check_token_ids,
)

LayerCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

ACTIVATION_FUNCTIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


class TransformerConfig(Protocol):
    """The config fields the shared layers and stacks read (WhisperConfig and Speech2TextConfig have them)."""

    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    dropout: float
    attention_dropout: float
    activation_dropout: float
    activation_function: str
    encoder_layerdrop: float
    decoder_layerdrop: float
    max_source_positions: int
    max_target_positions: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    decoder_start_token_id: int
    init_std: float
    tie_word_embeddings: bool
    attn_implementation: str



def check_transformer_config(
    config: TransformerConfig, positive: tuple[str, ...] = (), probabilities: tuple[str, ...] = ()
) -> None:
    """Validates the fields every encoder-decoder config has, plus the family's own `positive` integers and
    `probabilities`; errors name the config class and the field."""
    check_implementation(config.attn_implementation)
    check_positive_int(config, "vocab_size", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                       "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "d_model",
                       "max_source_positions", "max_target_positions", *positive)
    check_divisible(config, "d_model", "encoder_attention_heads", "decoder_attention_heads")
    check_token_ids(config, "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                    vocab_size=config.vocab_size)
    check_choice(config, "activation_function", tuple(ACTIVATION_FUNCTIONS))
    check_probability(config, "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
                      "decoder_layerdrop", *probabilities)

class Attention(nn.Module):
    """Multi-head attention for both self- and cross-attention.

    Subclasses set `key_bias` (openai/whisper has no `k_proj` bias) and `scale_query_first` (scale q before the
    product, as transformers' Whisper does, instead of inside the attention kernel) to follow their reference
    bit-closely.
    """

    key_bias = True
    scale_query_first = False

    def __init__(self, d_model: int, num_heads: int, dropout: float, attn_implementation: str,
                 is_causal: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout, self.is_causal = dropout, is_causal
        self.attn_implementation = check_implementation(attn_implementation)
        self.k_proj = nn.Linear(d_model, d_model, bias=self.key_bias)
        self.v_proj = nn.Linear(d_model, d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]

    def _query(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(hidden_states)
        return self._heads(q * self.scaling if self.scale_query_first else q)  # [B, H, T, Dh]

    @property
    def _kernel_scale(self) -> float | None:
        return 1.0 if self.scale_query_first else None  # None: the kernel's head_dim ** -0.5

    def cross_attention_weights(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor,
                                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The weights `[B, H, T, S]` (float32, without dropout) with which `forward(hidden_states,
        key_value_states, mask)` mixes the values, whatever the attention implementation: for pictures."""
        keys = self._heads(self.k_proj(key_value_states))
        return attention_weights(self._query(hidden_states), keys, mask, self._kernel_scale)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`hidden_states` `[B, T, d]` attends to itself, or to `key_value_states` `[B, S, d]` (cross-attention).

        `mask` is a boolean key mask broadcastable to `[B, H, T, keys]`. `past` holds earlier K/V: self-attention
        appends the new ones, cross-attention reuses them as they are. Returns `[B, T, d]` and the K/V to cache.
        """
        q = self._query(hidden_states)
        if key_value_states is not None and past is not None:
            k, v = past
        else:
            source = hidden_states if key_value_states is None else key_value_states
            k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = attend(
            q, k, v, mask=mask, is_causal=self.is_causal, scale=self._kernel_scale,
            dropout_p=self.dropout if self.training else 0.0, implementation=self.attn_implementation,
        )
        batch, _, time, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, time, -1)  # [B, T, H*Dh]
        return self.out_proj(out), (k, v)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward block; `attention_class` is the family's `Attention`."""

    attention_class: type[Attention] = Attention

    def __init__(self, config: TransformerConfig, attn_implementation: str, num_heads: int, ffn_dim: int,
                 is_causal: bool = False):
        super().__init__()
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout
        self.self_attn = self.attention_class(config.d_model, num_heads, config.attention_dropout,
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, S, d]` -> `[B, S, d]`; `mask` `[B, 1, 1, S]` (if any) hides padded frames from every query."""
        h, _ = self.self_attn(self.self_attn_layer_norm(x), mask=mask)
        x = self._feed_forward(self._residual(x, h))
        if x.dtype == torch.float16:  # as transformers: keep fp16 activations finite
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(min=-limit, max=limit)
        return x


class DecoderLayer(EncoderLayer):
    """Causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, config: TransformerConfig, attn_implementation: str):
        super().__init__(config, attn_implementation, config.decoder_attention_heads, config.decoder_ffn_dim,
                         is_causal=True)
        self.encoder_attn = self.attention_class(config.d_model, config.decoder_attention_heads,
                                                 config.attention_dropout, attn_implementation)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        x: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        mask: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        """`x` `[B, T, d]` -> `[B, T, d]` and this layer's updated cache."""
        h, self_kv = self.self_attn(self.self_attn_layer_norm(x), mask=mask,
                                    past=None if cache is None else cache[:2])
        x = self._residual(x, h)
        h, cross_kv = self.encoder_attn(self.encoder_attn_layer_norm(x), key_value_states=encoder_hidden_states,
                                        mask=encoder_mask, past=None if cache is None else cache[2:])
        return self._feed_forward(self._residual(x, h)), (*self_kv, *cross_kv)


class TransformerEncoder(nn.Module):
    """Base of a family's encoder: it builds the front end, `layers` and the final `layer_norm`, embeds the input
    and hands the result to `run_layers`."""

    config: TransformerConfig
    layers: nn.ModuleList
    layer_norm: nn.LayerNorm

    @property
    def may_leave_parameters_unused(self) -> bool:
        """A training step may skip layers (layerdrop), whose parameters then get no gradient: plain DDP must look
        for unused parameters (read by `speechtrain.distributed.build_strategy`)."""
        return self.config.encoder_layerdrop > 0

    @property
    def skips_blocks_at_random(self) -> bool:
        """Layerdrop draws on each rank which layers to skip: FSDP, whose layer forwards are collective, refuses it
        (read by `speechtrain.distributed.check_shardable`)."""
        return self.config.encoder_layerdrop > 0

    def build_layers(self, layer_class: type[EncoderLayer], attn_implementation: str) -> None:
        """`layers` (`encoder_layers` of the family's `layer_class`) and the final `layer_norm`."""
        config = self.config
        self.layers = nn.ModuleList(
            layer_class(config, attn_implementation, config.encoder_attention_heads, config.encoder_ffn_dim)
            for _ in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(config.d_model)

    def run_layers(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, S, d]` embedded input and an optional `[B, S]` mask (True = real) -> `[B, S, d]`, dropping layers
        (`encoder_layerdrop`) in training."""
        attention_mask = None if mask is None else padding_to_attention_mask(mask)
        layerdrop = self.config.encoder_layerdrop if self.training else 0.0
        for layer in self.layers:
            if not (layerdrop > 0 and torch.rand(()) < layerdrop):
                x = layer(x, attention_mask)
        return self.layer_norm(x)


class TransformerDecoder(nn.Module):
    """Base of a family's decoder: it builds the token and position embeddings, `layers` and the final
    `layer_norm`, embeds the new tokens (positions after `past_length`) and hands them to `run_layers`."""

    config: TransformerConfig
    layers: nn.ModuleList
    layer_norm: nn.LayerNorm

    @property
    def may_leave_parameters_unused(self) -> bool:
        """As the encoder's, for `decoder_layerdrop`."""
        return self.config.decoder_layerdrop > 0

    @property
    def skips_blocks_at_random(self) -> bool:
        """As the encoder's, for `decoder_layerdrop`."""
        return self.config.decoder_layerdrop > 0

    def build_layers(self, layer_class: type[DecoderLayer], attn_implementation: str) -> None:
        """`layers` (`decoder_layers` of the family's `layer_class`) and the final `layer_norm`."""
        self.layers = nn.ModuleList(layer_class(self.config, attn_implementation)
                                    for _ in range(self.config.decoder_layers))
        self.layer_norm = nn.LayerNorm(self.config.d_model)

    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        """`[B, T]` new tokens, the first at position `past_length` -> `[B, T, d]` token + position embeddings."""
        raise NotImplementedError

    @staticmethod
    def past_length(cache: list[LayerCache] | None) -> int:
        """How many tokens the cache already holds."""
        return 0 if cache is None else cache[0][0].shape[2]

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """`input_ids` `[B, T]` -> hidden states `[B, T, d]` and the updated cache (empty without `use_cache`).

        `encoder_mask` `[B, S]` marks real encoder positions; `attention_mask` `[B, past + T]` real tokens (1)
        and padding (0) over cached and new positions.
        """
        past_length = self.past_length(cache)
        batch, time = input_ids.shape
        if attention_mask is not None and attention_mask.shape != (batch, past_length + time):
            raise ValueError(
                f"decoder attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"{(batch, past_length + time)} (batch, cached + new tokens)"
            )
        x = F.dropout(self.embed(input_ids, past_length), p=self.config.dropout, training=self.training)
        return self.run_layers(x, encoder_hidden_states, attention_mask, encoder_mask, cache, use_cache)

    def run_layers(
        self,
        x: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_mask: torch.Tensor | None,
        cache: list[LayerCache] | None,
        use_cache: bool,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """`[B, T, d]` embedded tokens -> hidden states `[B, T, d]` and the updated cache (empty without
        `use_cache`). Masks are `[B, past + T]` and `[B, S]` (True/1 = real). Layers are dropped
        (`decoder_layerdrop`) only in training calls without `use_cache`."""
        mask = None if attention_mask is None else padding_to_attention_mask(attention_mask)
        cross_mask = None if encoder_mask is None else padding_to_attention_mask(encoder_mask)
        layerdrop = self.config.decoder_layerdrop if self.training and not use_cache else 0.0
        new_cache = []
        for index, layer in enumerate(self.layers):
            if layerdrop > 0 and torch.rand(()) < layerdrop:
                continue
            x, layer_cache = layer(x, encoder_hidden_states, mask, cross_mask, None if cache is None else cache[index])
            new_cache.append(layer_cache)
        return self.layer_norm(x), new_cache if use_cache else []


class EncoderDecoderModel(nn.Module):
    """Holds the encoder and decoder under transformers' `model.` prefix; the root module drives them."""

    def __init__(self, encoder: TransformerEncoder, decoder: TransformerDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder


class EncoderDecoderForConditionalGeneration(nn.Module):
    """What the root classes of Whisper and Speech2Text share: the interface of docs/design.md (`encode`,
    `decode`, teacher-forced `forward`), the modules, weight tying and transformers' initialisation.

    A family names its `encoder_class` and `decoder_class` (built as `model.encoder`, `model.decoder`) and the
    attribute of its language-model head (`output_head_name`, transformers' name: `proj_out`, `lm_head`). It
    implements `encode` and, if the encoder subsamples the frames, `encoder_mask`. Shared by subclassing rather
    than kept as copies: the two drifted apart once (the decode-time mask check was Speech2Text's only), and the
    family files keep only what differs.
    """

    config: TransformerConfig
    model: EncoderDecoderModel
    output_head_name: ClassVar[str]
    encoder_class: ClassVar[type[TransformerEncoder]]
    decoder_class: ClassVar[type[TransformerDecoder]]
    # FSDP and activation-checkpointing units, the family's subclasses included (speechtrain.distributed)
    block_classes: ClassVar[tuple[type[nn.Module], ...]] = (EncoderLayer, DecoderLayer)

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.model = EncoderDecoderModel(self.encoder_class(config, config.attn_implementation),
                                         self.decoder_class(config, config.attn_implementation))
        setattr(self, self.output_head_name, nn.Linear(config.d_model, config.vocab_size, bias=False))
        self.apply(self._init_weights)
        self.tie_weights()

    def finish_loading(self) -> None:
        """Called after the weights of a folder were assigned to a model built on the meta device: rebuilds what
        the state dict does not hold (position tables, frozen flags)."""

    @property
    def output_head(self) -> nn.Linear:
        return getattr(self, self.output_head_name)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation: normal(0, init_std) weights, zero biases, zero padding embedding."""
        init_weights(module, self.config.init_std)

    def tie_weights(self) -> None:
        """Shares the head's weight with `model.decoder.embed_tokens.weight` when `tie_word_embeddings`."""
        if self.config.tie_word_embeddings:
            self.output_head.weight = self.model.decoder.embed_tokens.weight

    def add_token_embeddings(self, sources: Mapping[int, Sequence[int]]) -> None:
        """Grows the vocabulary by the new ids in `sources` (consecutive from `vocab_size`), each new row of the token
        embedding (and of an untied head) the mean of its source rows, e.g. a new language token from the languages
        the checkpoint knows; `config.vocab_size` follows, so exports carry the new size."""
        new_ids = sorted(sources)
        if new_ids != list(range(self.config.vocab_size, self.config.vocab_size + len(new_ids))):
            raise ValueError(f"new token ids {new_ids} must follow the vocabulary of {self.config.vocab_size}")
        old = self.model.decoder.embed_tokens
        grown = nn.Embedding(old.num_embeddings + len(new_ids), old.embedding_dim, padding_idx=old.padding_idx,
                             device=old.weight.device, dtype=old.weight.dtype)
        head = None if self.config.tie_word_embeddings else self.output_head
        grown_head = None if head is None else nn.Linear(head.in_features, grown.num_embeddings, bias=False,
                                                        device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            grown.weight[: old.num_embeddings] = old.weight
            for new_id in new_ids:
                grown.weight[new_id] = old.weight[list(sources[new_id])].mean(0)  # [rows, d] -> [d]
            if head is not None:
                grown_head.weight[: head.out_features] = head.weight
                for new_id in new_ids:
                    grown_head.weight[new_id] = head.weight[list(sources[new_id])].mean(0)
        self.model.decoder.embed_tokens = grown
        if grown_head is not None:
            setattr(self, self.output_head_name, grown_head)
        self.config.vocab_size = grown.num_embeddings
        self.tie_weights()

    def get_encoder(self) -> nn.Module:
        """The encoder, e.g. to freeze it (transformers' name for this accessor)."""
        return self.model.encoder

    def encode(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input features and their frame mask -> `[B, S, d]` encoder states."""
        raise NotImplementedError

    def encoder_mask(self, frame_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The frame mask given to `encode`, mapped onto the encoder's positions (`[B, S]`, True = real); None
        when the model ignores it."""
        return None

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: list[LayerCache] | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """`decoder_input_ids` `[B, T]` (only the new tokens when `cache` is given) -> logits `[B, T, vocab]` and
        the cache to pass to the next call (empty without `use_cache`: a teacher-forced pass, as `forward`'s, keeps
        no keys and values and may drop layers in training). `encoder_attention_mask` is the *frame* mask given to
        `encode`."""
        encoder_mask = self.encoder_mask(encoder_attention_mask)
        if encoder_mask is not None and encoder_mask.shape[1] != encoder_hidden_states.shape[1]:
            raise ValueError(
                f"encoder_attention_mask has {encoder_attention_mask.shape[1]} frames, which subsample to "
                f"{encoder_mask.shape[1]} positions, but encoder_hidden_states has {encoder_hidden_states.shape[1]}; "
                "pass the frame mask that was given to encode()"
            )
        hidden, cache = self.model.decoder(decoder_input_ids, encoder_hidden_states, encoder_mask,
                                           decoder_attention_mask, cache, use_cache)
        return self.output_head(hidden), cache

    def cross_attention_weights(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced cross-attention weights of the last decoder layer `[B, heads, T, S encoder positions]`,
        as transformers' `output_attentions=True` gives them (`cross_attentions[-1]`): the picture of whether the
        decoder reads the audio in order. One extra forward pass, whose inputs to that layer a hook keeps."""
        attention = self.model.decoder.layers[-1].encoder_attn
        inputs: dict[str, Any] = {}
        keep = lambda module, args, kwargs: inputs.update(hidden_states=args[0], **kwargs)
        handle = attention.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            self(input_features, attention_mask, decoder_input_ids, decoder_attention_mask)
        finally:
            handle.remove()
        return attention.cross_attention_weights(inputs["hidden_states"], inputs["key_value_states"], inputs["mask"])

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits `[B, T, vocab]` for `decoder_input_ids` `[B, T]`: `encode`, then `decode` without a
        cache, so that a caller holding the encoder states (the ASR task's validation) gets the same logits."""
        if decoder_input_ids is None:
            raise ValueError(f"{type(self).__name__}.forward needs decoder_input_ids [batch, tokens]")
        encoder_hidden_states = self.encode(input_features, attention_mask)
        logits, _ = self.decode(decoder_input_ids, encoder_hidden_states, attention_mask,
                                decoder_attention_mask=decoder_attention_mask, use_cache=False)
        return logits


@torch.no_grad()
def init_weights(module: nn.Module, std: float) -> None:
    """transformers' initialisation for these models: normal(0, std) weights, zero biases, zero padding row."""
    if isinstance(module, nn.Linear | nn.Conv1d):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
