"""Speech2Text's entry in the model registry (`speechtrain.models.registry`)."""

from speechtrain.models.registry import ModelCard, ModelFamily
from speechtrain.models.speech2text import hub
from speechtrain.models.speech2text.config import Speech2TextConfig

S2T_EXAMPLE = "facebook/s2t-small-librispeech-asr"

MODEL_FAMILIES = (
    ModelFamily.from_hub(
        hub, "speech_to_text", Speech2TextConfig, hub.build_speech2text,
        ModelCard("automatic-speech-recognition", "transformers",
                  "transformers.Speech2TextForConditionalGeneration.from_pretrained(folder)"),
        tokenizer="speechtrain.models.speech2text.tokenizer:Speech2TextTokenizer",
        feature_extractor="speechtrain.models.speech2text.features:Speech2TextFeatureExtractor",
        pretrained_example=f"{S2T_EXAMPLE}, downloaded with `huggingface-cli download {S2T_EXAMPLE} "
                           "--local-dir models/s2t-small-librispeech-asr`",
    ),
)
