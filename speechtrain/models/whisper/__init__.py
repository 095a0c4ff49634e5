"""Whisper: config, modules and Hugging Face-format load/save."""

from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.hub import build_whisper, load_pretrained, model_from_hf_config, save_pretrained
from speechtrain.models.whisper.modeling import (
    WhisperAttention,
    WhisperDecoder,
    WhisperDecoderLayer,
    WhisperEncoder,
    WhisperEncoderLayer,
    WhisperForConditionalGeneration,
)

__all__ = [
    "WhisperAttention",
    "WhisperConfig",
    "WhisperDecoder",
    "WhisperDecoderLayer",
    "WhisperEncoder",
    "WhisperEncoderLayer",
    "WhisperForConditionalGeneration",
    "build_whisper",
    "load_pretrained",
    "model_from_hf_config",
    "save_pretrained",
]
