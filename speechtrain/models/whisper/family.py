"""Whisper's entry in the model registry (`speechtrain.models.registry`)."""

from speechtrain.models.registry import ModelCard, ModelFamily
from speechtrain.models.whisper import hub
from speechtrain.models.whisper.config import WhisperConfig

CARD = ModelCard("automatic-speech-recognition", "transformers",
                 "transformers.WhisperForConditionalGeneration.from_pretrained(folder)")
PROCESSORS = {"tokenizer": "speechtrain.models.whisper.tokenizer:WhisperTokenizer",
              "feature_extractor": "speechtrain.models.whisper.features:WhisperFeatureExtractor"}
EXAMPLE = ("openai/whisper-tiny, downloaded with "
           "`huggingface-cli download openai/whisper-tiny --local-dir models/whisper-tiny`")
EXPORT_FORMATS = {"ctranslate2": "speechtrain.models.whisper.ctranslate2:export_ctranslate2_folder"}  # faster-whisper

MODEL_FAMILIES = (
    ModelFamily.from_hub(hub, "whisper", WhisperConfig, hub.build_whisper, CARD, **PROCESSORS,
                         pretrained_example=EXAMPLE, export_formats=EXPORT_FORMATS),
)
