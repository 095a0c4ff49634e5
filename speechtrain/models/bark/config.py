"""Bark sub-model hyper-parameters with transformers' field names, and the token constants of Bark's generation.

One dataclass serves the three sub-models; `model_type` says which (`semantic`, `coarse_acoustics`,
`fine_acoustics`), as in their `config.json`. The generation constants (special token ids, rates, window sizes)
are the defaults of transformers' `BarkSemanticGenerationConfig`, `BarkCoarseGenerationConfig`,
`BarkFineGenerationConfig` and `BarkGenerationConfig` (which are suno-ai/bark's module constants); a checkpoint's
`generation_config.json` may override them through `from_hf_dict`. Training layouts and generation both read
them from here, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from speechtrain.errors import ConfigError
from speechtrain.layers.attention import check_implementation
from speechtrain.layers.config_fields import check_choice, check_divisible, check_positive_int, check_probability
from speechtrain.models.hf_config import hf_config_fields, known_fields, saved_fields

MODEL_TYPES = ("semantic", "coarse_acoustics", "fine_acoustics")
ARCHITECTURES = {"semantic": "BarkSemanticModel", "coarse_acoustics": "BarkCoarseModel",
                 "fine_acoustics": "BarkFineModel"}
FINE_ONLY_FIELDS = ("n_codes_total", "n_codes_given", "tie_word_embeddings")


@dataclass
class BarkSubModelConfig:
    """Defaults are transformers' `BarkSubModelConfig` (GPT-2 small widths). `bias` switches the linear biases
    (and, in the causal models, the layer-norm biases). The `n_codes_*` and `tie_word_embeddings` fields are
    the fine model's; `attn_implementation` is ours and is not written to `config.json`."""

    model_type: str = "semantic"  # semantic, coarse_acoustics or fine_acoustics
    block_size: int = 1024  # the context, in tokens (the fine model: codec frames)
    input_vocab_size: int = 10_048  # Bark's own: semantic 129 600 (text + semantic), coarse 12 096, fine 1 056
    output_vocab_size: int = 10_048
    # the stack: GPT-2 small widths (Bark's large checkpoints: 24 layers, 16 heads, 1024 wide)
    num_layers: int = 12
    num_heads: int = 12
    hidden_size: int = 768
    dropout: float = 0.0
    bias: bool = True  # the linears' and, in the causal models, the layer norms' biases
    initializer_range: float = 0.02
    n_codes_total: int = 8  # the fine model's EnCodec codebooks in all
    n_codes_given: int = 1  # ... of which it never predicts the first; one head for each of the others
    tie_word_embeddings: bool = True
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        check_choice(self, "model_type", MODEL_TYPES)
        check_positive_int(self, "block_size", "input_vocab_size", "output_vocab_size", "num_layers", "num_heads",
                           "hidden_size", "n_codes_total", "n_codes_given")
        check_divisible(self, "hidden_size", "num_heads")
        check_probability(self, "dropout")
        check_implementation(self.attn_implementation)
        if self.is_fine:
            if self.n_codes_given >= self.n_codes_total:
                raise ConfigError(f"BarkSubModelConfig.n_codes_given={self.n_codes_given} must be smaller than "
                                 f"n_codes_total={self.n_codes_total}: the fine model predicts the rest")
            if self.tie_word_embeddings and self.input_vocab_size != self.output_vocab_size:
                raise ConfigError(
                    f"BarkSubModelConfig: tie_word_embeddings needs input_vocab_size ({self.input_vocab_size}) == "
                    f"output_vocab_size ({self.output_vocab_size}); the fine heads share the embedding matrices")

    @property
    def is_fine(self) -> bool:
        return self.model_type == "fine_acoustics"

    @classmethod
    def from_hf_dict(cls, hf_config: Mapping[str, Any]) -> BarkSubModelConfig:
        """Builds from a transformers `config.json` dict (`model_type` decides the sub-model); keys this model
        does not use are ignored."""
        values = hf_config_fields(cls, hf_config, MODEL_TYPES)
        if values["model_type"] != "fine_acoustics":  # causal models have no such fields (transformers ignores them)
            values = {key: value for key, value in values.items() if key not in FINE_ONLY_FIELDS}
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` dict that transformers' `BarkSemanticConfig` / `BarkCoarseConfig` / `BarkFineConfig`
        writes and reads."""
        values = saved_fields(self)
        if not self.is_fine:
            values = {key: value for key, value in values.items() if key not in FINE_ONLY_FIELDS}
        return {"architectures": [ARCHITECTURES[self.model_type]], "use_cache": True, **values}


@dataclass(frozen=True)
class SemanticGenerationConfig:
    """`BarkSemanticGenerationConfig` defaults. `semantic_pad_token` is its `eos_token_id`: Bark pads the semantic
    history with the end-of-semantic token, and generation stops on it."""

    text_encoding_offset: int = 10_048  # added to BERT's text ids, past the semantic ids
    text_pad_token: int = 129_595
    semantic_infer_token: int = 129_599  # between the text with its history and the semantic ids to generate
    semantic_vocab_size: int = 10_000
    semantic_pad_token: int = 10_000
    max_input_semantic_length: int = 256  # text tokens and history tokens, each padded or cut to this
    semantic_rate_hz: float = 49.9
    max_new_tokens: int = 768  # about 15 s of semantic tokens
    min_eos_p: float | None = None

    @property
    def eos_token_id(self) -> int:
        return self.semantic_pad_token

    @classmethod
    def from_hf_dict(cls, values: Mapping[str, Any] | None) -> SemanticGenerationConfig:
        values = dict(values or {})
        if "eos_token_id" in values and "semantic_pad_token" not in values:
            values["semantic_pad_token"] = values["eos_token_id"]
        return cls(**known_fields(cls, values))


@dataclass(frozen=True)
class CoarseGenerationConfig:
    """`BarkCoarseGenerationConfig` defaults, plus `codebook_size` (`BarkGenerationConfig`'s)."""

    coarse_semantic_pad_token: int = 12_048
    coarse_infer_token: int = 12_050
    coarse_rate_hz: float = 75
    n_coarse_codebooks: int = 2
    max_coarse_input_length: int = 256
    max_coarse_history: int = 630
    sliding_window_len: int = 60
    codebook_size: int = 1024

    @classmethod
    def from_hf_dict(cls, values: Mapping[str, Any] | None) -> CoarseGenerationConfig:
        return cls(**known_fields(cls, values))


@dataclass(frozen=True)
class FineGenerationConfig:
    """`BarkFineGenerationConfig` defaults, plus `codebook_size`: it is also the value that fills the codebooks
    still to predict (one id past the codebook)."""

    max_fine_history_length: int = 512
    max_fine_input_length: int = 1024
    n_fine_codebooks: int = 8
    codebook_size: int = 1024

    @classmethod
    def from_hf_dict(cls, values: Mapping[str, Any] | None) -> FineGenerationConfig:
        return cls(**known_fields(cls, values))


@dataclass(frozen=True)
class BarkGenerationConfig:
    """The three stages' constants together, with the quantities Bark derives from them."""

    semantic: SemanticGenerationConfig = SemanticGenerationConfig()
    coarse: CoarseGenerationConfig = CoarseGenerationConfig()
    fine: FineGenerationConfig = FineGenerationConfig()

    @property
    def semantic_to_coarse_ratio(self) -> float:
        """Coarse tokens (both codebooks, interleaved) per semantic token: 75 / 49.9 * 2."""
        return self.coarse.coarse_rate_hz / self.semantic.semantic_rate_hz * self.coarse.n_coarse_codebooks

    @property
    def max_semantic_history(self) -> int:
        """Semantic tokens before the current coarse position that a coarse window sees."""
        return int(math.floor(self.coarse.max_coarse_history / self.semantic_to_coarse_ratio))

    def coarse_offset(self, codebook: int) -> int:
        """The id of code 0 of coarse `codebook` in the coarse model's vocabulary."""
        return self.semantic.semantic_vocab_size + codebook * self.coarse.codebook_size

    @classmethod
    def from_hf_dict(cls, values: Mapping[str, Any] | None) -> BarkGenerationConfig:
        """From a `BarkGenerationConfig` `generation_config.json` dict (nested per-stage dicts)."""
        values = dict(values or {})
        codebook = {"codebook_size": values["codebook_size"]} if "codebook_size" in values else {}
        return cls(
            SemanticGenerationConfig.from_hf_dict(values.get("semantic_config")),
            CoarseGenerationConfig.from_hf_dict({**(values.get("coarse_acoustics_config") or {}), **codebook}),
            FineGenerationConfig.from_hf_dict({**(values.get("fine_acoustics_config") or {}), **codebook}),
        )
