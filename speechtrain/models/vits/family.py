"""VITS's entry in the model registry (`speechtrain.models.registry`)."""

from speechtrain.models.registry import ModelCard, ModelFamily
from speechtrain.models.vits import hub
from speechtrain.models.vits.config import VitsConfig

MODEL_FAMILIES = (
    ModelFamily.from_hub(
        hub, "vits", VitsConfig, hub.build_vits,
        ModelCard("text-to-speech", "transformers", "transformers.VitsModel.from_pretrained(folder)"),
        tokenizer="speechtrain.models.vits.tokenizer:VitsTextTokenizer",
        pretrained_example="facebook/mms-tts-eng, downloaded with "
                           "`huggingface-cli download facebook/mms-tts-eng --local-dir models/mms-tts-eng`, or a "
                           "Piper voice imported with `speechtrain-import-piper VOICE.onnx models/voice`",
        export_formats={"piper": "speechtrain.models.vits.piper:export_piper_folder"},
    ),
)
