"""Speech2Text (fairseq S2T): config, modules and Hugging Face-format load/save."""

from speechtrain.models.speech2text.config import Speech2TextConfig
from speechtrain.models.speech2text.hub import (
    build_speech2text,
    load_pretrained,
    model_from_hf_config,
    save_pretrained,
)
from speechtrain.models.speech2text.modeling import (
    Conv1dSubsampler,
    Speech2TextDecoder,
    Speech2TextDecoderLayer,
    Speech2TextEncoder,
    Speech2TextEncoderLayer,
    Speech2TextForConditionalGeneration,
    Speech2TextSinusoidalPositionalEmbedding,
)

__all__ = [
    "Conv1dSubsampler",
    "Speech2TextConfig",
    "Speech2TextDecoder",
    "Speech2TextDecoderLayer",
    "Speech2TextEncoder",
    "Speech2TextEncoderLayer",
    "Speech2TextForConditionalGeneration",
    "Speech2TextSinusoidalPositionalEmbedding",
    "build_speech2text",
    "load_pretrained",
    "model_from_hf_config",
    "save_pretrained",
]
