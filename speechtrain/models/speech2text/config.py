"""Speech2Text hyper-parameters with transformers' field names, so `config.json` round-trips with the Hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from speechtrain.errors import ConfigError
from speechtrain.layers.transformer import check_transformer_config
from speechtrain.models.hf_config import encoder_decoder_hf_dict, hf_config_fields


@dataclass
class Speech2TextConfig:
    """Defaults are transformers' (fairseq's `s2t_transformer_s`: 256 wide, 12 + 6 layers, fairseq token ids).

    `input_feat_per_channel * input_channels` filterbank values per frame enter `num_conv_layers` stride-2
    convolutions (4x fewer frames with the default two), so the encoder sees one position per 40 ms.
    """

    vocab_size: int = 10000
    # the two stacks (s2t_transformer_s: 12 encoder and 6 decoder layers, 256 wide)
    encoder_layers: int = 12
    encoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 4
    decoder_layers: int = 6
    decoder_ffn_dim: int = 2048
    decoder_attention_heads: int = 4  # d_model / heads = 64 per head
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    activation_function: str = "relu"
    d_model: int = 256
    # regularisation and initialisation (fairseq's S2T recipes train with dropout 0.1)
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = True  # embeddings times sqrt(d_model), as fairseq
    # token ids: fairseq's dictionary order (<s>, <pad>, </s>, <unk>)
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    # positions: sinusoidal, so these are limits rather than learnt tables
    max_source_positions: int = 6000
    max_target_positions: int = 1024
    # the convolutional subsampler in front of the encoder
    num_conv_layers: int = 2
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    conv_channels: int = 1024
    input_feat_per_channel: int = 80
    input_channels: int = 1
    tie_word_embeddings: bool = True
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2; not saved in config.json

    def __post_init__(self) -> None:
        self.conv_kernel_sizes = list(self.conv_kernel_sizes)
        check_transformer_config(self, positive=("num_conv_layers", "conv_channels", "input_feat_per_channel",
                                                 "input_channels"))
        if self.d_model < 4:
            raise ConfigError(f"Speech2TextConfig.d_model={self.d_model} must be >= 4 (sinusoidal positions)")
        if len(self.conv_kernel_sizes) != self.num_conv_layers:
            raise ConfigError(
                f"Speech2TextConfig.conv_kernel_sizes={self.conv_kernel_sizes} must have num_conv_layers="
                f"{self.num_conv_layers} entries"
            )
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in self.conv_kernel_sizes):
            raise ConfigError(
                f"Speech2TextConfig.conv_kernel_sizes={self.conv_kernel_sizes} must be odd positive integers "
                "(the frame mask is subsampled as (length - 1) // 2 + 1 per layer)"
            )
        if self.conv_channels % 2:
            raise ConfigError(f"Speech2TextConfig.conv_channels={self.conv_channels} must be even (GLU halves it)")

    @property
    def input_size(self) -> int:
        """Values per input frame: filterbank bins times channels."""
        return self.input_feat_per_channel * self.input_channels

    @classmethod
    def from_hf_dict(cls, hf_config: dict[str, Any]) -> Speech2TextConfig:
        """Builds from a transformers `config.json` dict; keys this model does not use are ignored."""
        values = hf_config_fields(cls, hf_config, ("speech_to_text",))
        if isinstance(values.get("eos_token_id"), list):  # transformers allows several end tokens
            values["eos_token_id"] = values["eos_token_id"][0]
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.Speech2TextConfig` accepts."""
        return encoder_decoder_hf_dict(self, "Speech2TextForConditionalGeneration", "speech_to_text")
