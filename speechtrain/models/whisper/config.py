"""Whisper hyper-parameters with transformers' field names, so `config.json` round-trips with the Hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from speechtrain.errors import ConfigError
from speechtrain.layers.transformer import check_transformer_config
from speechtrain.models.hf_config import encoder_decoder_hf_dict, hf_config_fields


@dataclass
class WhisperConfig:
    """Defaults are transformers' (whisper-tiny sized widths, multilingual token ids).

    `scale_embedding`, `suppress_tokens`, `begin_suppress_tokens` and `median_filter_width` are kept for the
    config.json round trip; the model does not use them (transformers' Whisper ignores `scale_embedding` too,
    and suppression is the decoder's job). The SpecAugment fields are read by the training task.
    """

    vocab_size: int = 51865
    num_mel_bins: int = 80  # log-mel channels: 80, or 128 for large-v3
    # the two stacks (tiny 4 + 4 layers of 384, base 6 + 6 of 512, small 12 + 12 of 768)
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536  # 4 * d_model in every released size
    encoder_ffn_dim: int = 1536
    encoder_layerdrop: float = 0.0  # the chance that a training step skips a whole layer
    decoder_layerdrop: float = 0.0
    d_model: int = 384
    activation_function: str = "gelu"
    # regularisation and initialisation
    dropout: float = 0.0  # openai/whisper has no dropout at all
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02  # of the normal initialisation from scratch
    scale_embedding: bool = False  # Whisper does not scale its token embeddings by sqrt(d_model)
    # positions: 1500 encoder frames (30 s after the stride-2 convolution), 448 text tokens
    max_source_positions: int = 1500
    max_target_positions: int = 448
    # token ids: transformers' defaults, the English-only models' <|endoftext|> and <|startoftranscript|>
    pad_token_id: int = 50256
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    decoder_start_token_id: int = 50257
    tie_word_embeddings: bool = True
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = field(default_factory=lambda: [220, 50256])  # never first: " ", end
    median_filter_width: int = 7  # of the cross-attention weights for word timestamps
    # transformers' SpecAugment (apply_spec_augment): time and feature masks during training
    apply_spec_augment: bool = False
    mask_time_prob: float = 0.05  # about this share of the frames masked, in spans of mask_time_length
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0  # the same over the mel bins
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2; not saved in config.json

    def __post_init__(self) -> None:
        check_transformer_config(self, positive=("num_mel_bins",),
                                 probabilities=("mask_time_prob", "mask_feature_prob"))
        if self.d_model % 2 or self.d_model < 4:
            raise ConfigError(f"WhisperConfig.d_model={self.d_model} must be even and >= 4 (sinusoidal positions)")

    @classmethod
    def from_hf_dict(cls, hf_config: dict[str, Any]) -> WhisperConfig:
        """Builds from a transformers `config.json` dict; keys this model does not use are ignored."""
        values = hf_config_fields(cls, hf_config, ("whisper",))
        for key in ("suppress_tokens", "begin_suppress_tokens"):
            if values.get(key) is not None:
                values[key] = list(values[key])
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.WhisperConfig` accepts."""
        return encoder_decoder_hf_dict(self, "WhisperForConditionalGeneration", "whisper")
