"""Bark: the semantic, coarse and fine sub-models, their training layouts, generation and Hugging Face-format
load/save."""

from speechtrain.models.bark.config import (
    BarkGenerationConfig,
    BarkSubModelConfig,
    CoarseGenerationConfig,
    FineGenerationConfig,
    SemanticGenerationConfig,
)
from speechtrain.models.bark.generation import generate_audio, generate_coarse, generate_fine, generate_semantic
from speechtrain.models.bark.hub import (
    build_coarse_acoustics,
    build_fine_acoustics,
    build_semantic,
    load_hf_state_dict,
    load_pretrained,
    model_from_config,
    model_from_hf_config,
    save_pretrained,
)
from speechtrain.models.bark.modeling import BarkCausalModel, BarkFineModel

__all__ = [
    "BarkCausalModel",
    "BarkFineModel",
    "BarkGenerationConfig",
    "BarkSubModelConfig",
    "CoarseGenerationConfig",
    "FineGenerationConfig",
    "SemanticGenerationConfig",
    "build_coarse_acoustics",
    "build_fine_acoustics",
    "build_semantic",
    "generate_audio",
    "generate_coarse",
    "generate_fine",
    "generate_semantic",
    "load_hf_state_dict",
    "load_pretrained",
    "model_from_config",
    "model_from_hf_config",
    "save_pretrained",
]
