"""VITS hyper-parameters with transformers' field names, so an MMS-style `config.json` round-trips with the Hub."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from speechtrain.errors import ConfigError
from speechtrain.layers.attention import check_implementation
from speechtrain.layers.config_fields import (
    check_choice,
    check_divisible,
    check_non_negative_int,
    check_positive,
    check_positive_int,
    check_probability,
    check_token_ids,
)
from speechtrain.layers.transformer import ACTIVATION_FUNCTIONS
from speechtrain.models.hf_config import hf_config_fields, saved_fields

ACTIVATIONS = tuple(ACTIVATION_FUNCTIONS)


@dataclass
class VitsConfig:
    """Defaults are transformers' (the `facebook/mms-tts-*` architecture).

    `noise_scale`, `noise_scale_duration` and `speaking_rate` are the inference defaults of `VitsModel.forward`.
    `initializer_range` is kept for the config.json round trip only: VITS initialises as the original code does.
    `window_size=0` turns the relative positions off (plain attention; transformers cannot run that).
    `resblock_type=2` is HiFi-GAN V2's residual block (Piper's x_low, low and medium voices), which transformers'
    `VitsModel` lacks: such a folder loads here and exports to Piper, not to transformers.
    """

    vocab_size: int = 38  # the tokenizer's symbols (MMS: characters; Piper: phoneme ids)
    # text encoder: a relative-position transformer over the symbols
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 2
    window_size: int = 4  # relative positions seen on each side; 0 for plain attention
    use_bias: bool = True
    ffn_dim: int = 768
    layerdrop: float = 0.1
    ffn_kernel_size: int = 3  # the feed-forward is two convolutions over time, not two linears
    flow_size: int = 192  # channels of the latent z shared by the posterior encoder, the flow and the decoder
    spectrogram_bins: int = 513  # linear-spectrogram bins the posterior encoder reads: n_fft // 2 + 1
    hidden_act: str = "relu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    use_stochastic_duration_prediction: bool = True  # false: the deterministic duration predictor
    num_speakers: int = 1
    speaker_embedding_size: int = 0  # the conditioning width of a multi-speaker model (0: one speaker)
    # HiFi-GAN decoder: the product of upsample_rates is the hop length (256 samples)
    upsample_initial_channel: int = 512
    upsample_rates: list[int] = field(default_factory=lambda: [8, 8, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 4, 4])
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    resblock_type: int = 1  # HiFi-GAN V1's residual block; 2 for V2's
    leaky_relu_slope: float = 0.1
    # stochastic duration predictor: dilated depth-separable convolutions and rational-quadratic spline flows
    depth_separable_channels: int = 2
    depth_separable_num_layers: int = 3
    duration_predictor_flow_bins: int = 10  # spline bins
    duration_predictor_tail_bound: float = 5.0  # the splines are the identity outside [-bound, bound]
    duration_predictor_kernel_size: int = 3
    duration_predictor_dropout: float = 0.5
    duration_predictor_num_flows: int = 4
    duration_predictor_filter_channels: int = 256
    # the flow (prior encoder) and the posterior encoder: WaveNet stacks
    prior_encoder_num_flows: int = 4  # mean-only coupling layers, each followed by a flip
    prior_encoder_num_wavenet_layers: int = 4
    posterior_encoder_num_wavenet_layers: int = 16
    wavenet_kernel_size: int = 5
    wavenet_dilation_rate: int = 1
    wavenet_dropout: float = 0.0
    # inference: durations are divided by speaking_rate; the noise scales multiply the prior's and the durations'
    speaking_rate: float = 1.0
    noise_scale: float = 0.667
    noise_scale_duration: float = 0.8
    sampling_rate: int = 16_000  # MMS voices; Piper's are 22_050 or 16_000
    pad_token_id: int | None = None
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2; not saved in config.json

    def __post_init__(self) -> None:
        check_implementation(self.attn_implementation)
        self.upsample_rates = [int(rate) for rate in self.upsample_rates]
        self.upsample_kernel_sizes = [int(size) for size in self.upsample_kernel_sizes]
        self.resblock_kernel_sizes = [int(size) for size in self.resblock_kernel_sizes]
        self.resblock_dilation_sizes = [[int(d) for d in dilations] for dilations in self.resblock_dilation_sizes]
        check_positive_int(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                           "ffn_kernel_size", "flow_size", "spectrogram_bins", "num_speakers",
                           "upsample_initial_channel", "depth_separable_num_layers", "duration_predictor_flow_bins",
                           "duration_predictor_kernel_size", "duration_predictor_num_flows",
                           "duration_predictor_filter_channels", "prior_encoder_num_flows",
                           "prior_encoder_num_wavenet_layers", "posterior_encoder_num_wavenet_layers",
                           "wavenet_kernel_size", "wavenet_dilation_rate", "sampling_rate")
        check_non_negative_int(self, "window_size", "speaker_embedding_size")
        check_divisible(self, "hidden_size", "num_attention_heads")
        if self.flow_size % 2:
            raise ConfigError(f"VitsConfig.flow_size={self.flow_size} must be even (the coupling layers split it)")
        if self.depth_separable_channels != 2:
            raise ConfigError(f"VitsConfig.depth_separable_channels={self.depth_separable_channels} must be 2: the "
                             "stochastic duration predictor's flows model (duration, noise) channel pairs")
        if self.wavenet_kernel_size % 2 == 0:
            raise ConfigError(f"VitsConfig.wavenet_kernel_size={self.wavenet_kernel_size} must be odd")
        if self.num_speakers > 1 and self.speaker_embedding_size == 0:
            raise ConfigError(f"VitsConfig.num_speakers={self.num_speakers} needs speaker_embedding_size > 0")
        check_choice(self, "hidden_act", ACTIVATIONS)
        check_choice(self, "resblock_type", (1, 2))
        if not self.upsample_rates or len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ConfigError(f"VitsConfig.upsample_kernel_sizes={self.upsample_kernel_sizes} and upsample_rates="
                             f"{self.upsample_rates} must be non-empty lists of the same length")
        if not self.resblock_kernel_sizes or len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            raise ConfigError(f"VitsConfig.resblock_dilation_sizes={self.resblock_dilation_sizes} and "
                             f"resblock_kernel_sizes={self.resblock_kernel_sizes} must be non-empty and equally long")
        if any(rate < 1 for rate in self.upsample_rates):
            raise ConfigError(f"VitsConfig.upsample_rates={self.upsample_rates} must be positive")
        if any((kernel - rate) % 2 for kernel, rate in zip(self.upsample_kernel_sizes, self.upsample_rates)):
            raise ConfigError(f"VitsConfig.upsample_kernel_sizes={self.upsample_kernel_sizes} minus upsample_rates="
                             f"{self.upsample_rates} must be even, or the decoder does not upsample exactly")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ConfigError(f"VitsConfig.upsample_initial_channel={self.upsample_initial_channel} must be divisible "
                             f"by 2**len(upsample_rates)={2 ** len(self.upsample_rates)} (each upsampling halves it)")
        check_probability(self, "layerdrop", "hidden_dropout", "attention_dropout", "activation_dropout",
                          "duration_predictor_dropout", "wavenet_dropout")
        check_positive(self, "speaking_rate", "duration_predictor_tail_bound", "layer_norm_eps")
        check_token_ids(self, "pad_token_id", vocab_size=self.vocab_size, optional=True)

    @property
    def transformers_compatible(self) -> bool:
        """Whether transformers' `VitsModel` can hold this layout: it has HiFi-GAN's V1 residual block only."""
        return self.resblock_type == 1

    @property
    def hop_length(self) -> int:
        """Waveform samples per spectrogram frame: the decoder's total upsampling."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_hf_dict(cls, hf_config: dict[str, Any]) -> VitsConfig:
        """Builds from a transformers `config.json` dict; keys this model does not use are ignored."""
        return cls(**hf_config_fields(cls, hf_config, ("vits",)))

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.VitsConfig` accepts."""
        return {"architectures": ["VitsModel"], "model_type": "vits", **saved_fields(self)}
