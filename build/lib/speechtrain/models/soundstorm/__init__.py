"""SoundStorm: config, Conformer, training corruption, iterative decoding and folder load/save."""

from speechtrain.models.soundstorm.config import SoundStormConfig
from speechtrain.models.soundstorm.generation import generate
from speechtrain.models.soundstorm.hub import (
    build_soundstorm,
    load_pretrained,
    load_soundstorm_pytorch_state_dict,
    model_from_hf_config,
    save_pretrained,
)
from speechtrain.models.soundstorm.masking import IGNORE_INDEX, MaskedBatch, SoundStormMasking
from speechtrain.models.soundstorm.modeling import SoundStorm

__all__ = [
    "IGNORE_INDEX",
    "MaskedBatch",
    "SoundStorm",
    "SoundStormConfig",
    "SoundStormMasking",
    "build_soundstorm",
    "generate",
    "load_pretrained",
    "load_soundstorm_pytorch_state_dict",
    "model_from_hf_config",
    "save_pretrained",
]
