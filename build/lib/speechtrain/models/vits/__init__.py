"""VITS: config, generator components (one per file) and Hugging Face-format load/save."""

from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.vits.hub import (
    build_vits,
    load_hf_state_dict,
    load_pretrained,
    model_from_hf_config,
    save_pretrained,
    state_dict_from_hf,
    state_dict_to_hf,
)
from speechtrain.models.vits.modeling import VitsModel, slice_segments

__all__ = [
    "build_vits",
    "VitsConfig",
    "VitsModel",
    "load_hf_state_dict",
    "load_pretrained",
    "model_from_hf_config",
    "save_pretrained",
    "slice_segments",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
