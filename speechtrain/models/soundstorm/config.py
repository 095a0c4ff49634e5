"""SoundStorm hyper-parameters; saved as the model folder's `config.json` (`model_type: "soundstorm"`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speechtrain.errors import ConfigError
from speechtrain.layers.attention import check_implementation
from speechtrain.layers.config_fields import (
    check_non_negative_int,
    check_positive,
    check_positive_int,
    check_probability,
)
from speechtrain.models.hf_config import hf_config_fields, saved_fields


@dataclass
class SoundStormConfig:
    """Defaults are the paper's (Borsos et al. 2023): a 12-layer, 1024-wide Conformer with 16 heads over 12 levels
    of a 1024-entry codebook, conditioned on 50 Hz semantic tokens; `acoustic_rate` is the codec frame rate
    (SoundStream 50 Hz in the paper, EnCodec 24 kHz 75 Hz). Codes `0..codebook_size-1` are tokens and
    `codebook_size` is every level's mask id.

    `num_semantic_tokens=0` makes the model unconditional. `self_condition` adds the seed's self-conditioning
    parameters (the previous prediction's hidden states projected and added to the input).
    """

    codebook_size: int = 1024  # entries per level; this id is every level's mask
    num_quantizers: int = 12  # residual-VQ levels (EnCodec 24 kHz at 6 kbps: 8)
    # the Conformer
    dim: int = 1024
    depth: int = 12
    heads: int = 16
    dim_head: int = 64  # heads * dim_head need not equal dim
    ff_mult: int = 4  # feed-forward width: ff_mult * dim
    conv_expansion_factor: int = 2  # the convolution module's pointwise expansion, halved again by its GLU
    conv_kernel_size: int = 31  # the depthwise convolution, in frames
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    conv_dropout: float = 0.0
    # the conditioning: semantic tokens and the rates that map their frames onto codec frames
    num_semantic_tokens: int = 500  # k-means clusters of the semantic tokenizer
    semantic_rate: float = 50.0  # Hz
    acoustic_rate: float = 50.0  # codec frames per second
    self_condition: bool = False
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2; not saved in config.json

    def __post_init__(self) -> None:
        check_positive_int(self, "codebook_size", "num_quantizers", "dim", "depth", "heads", "dim_head", "ff_mult",
                           "conv_expansion_factor", "conv_kernel_size")
        check_non_negative_int(self, "num_semantic_tokens", why="0 = unconditional")
        if self.dim_head % 2:
            raise ConfigError(f"SoundStormConfig.dim_head={self.dim_head} must be even (rotary positions rotate "
                              "feature pairs)")
        check_probability(self, "attn_dropout", "ff_dropout", "conv_dropout")
        check_positive(self, "semantic_rate", "acoustic_rate", unit="Hz")
        check_implementation(self.attn_implementation)

    @property
    def mask_id(self) -> int:
        """The id that marks a masked code at every level."""
        return self.codebook_size

    @classmethod
    def from_hf_dict(cls, hf_config: dict[str, Any]) -> SoundStormConfig:
        """Builds from a `config.json` dict; keys that are not fields (e.g. `architectures`) are ignored."""
        return cls(**hf_config_fields(cls, hf_config, ("soundstorm",)))

    def to_hf_dict(self) -> dict[str, Any]:
        return {"architectures": ["SoundStorm"], "model_type": "soundstorm", **saved_fields(self)}
