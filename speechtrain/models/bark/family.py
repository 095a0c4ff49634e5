"""Bark's three model types in the model registry (`speechtrain.models.registry`): one config class and one
folder format, a builder per sub-model; only the semantic model reads text."""

from collections.abc import Callable

from torch import nn

from speechtrain.models.bark import hub
from speechtrain.models.bark.config import BarkSubModelConfig
from speechtrain.models.registry import ModelCard, ModelFamily

PRETRAINED_EXAMPLE = ("the {part} of suno/bark saved by transformers: `BarkModel.from_pretrained('suno/bark')"
                      ".{part}.save_pretrained('models/bark/{part}')`")


# The community quantizer whose ids stand in for Bark's unreleased semantic tokenizer (`quantizer.py`).
SEMANTIC_QUANTIZERS = {"bark-quantizer": "speechtrain.models.bark.quantizer:load_quantizer"}


def _sub_model(model_type: str, build: Callable[..., nn.Module], transformers_class: str,
               tokenizer: str | None = None, **options: object) -> ModelFamily:
    card = ModelCard("text-to-speech", "transformers", f"transformers.{transformers_class}.from_pretrained(folder)")
    return ModelFamily.from_hub(hub, model_type, BarkSubModelConfig, build, card, tokenizer=tokenizer,
                                pretrained_example=PRETRAINED_EXAMPLE.format(part=model_type), **options)


MODEL_FAMILIES = (
    _sub_model("semantic", hub.build_semantic, "BarkSemanticModel",
               "speechtrain.models.bark.tokenizer:BarkTextTokenizer", semantic_quantizers=SEMANTIC_QUANTIZERS),
    _sub_model("coarse_acoustics", hub.build_coarse_acoustics, "BarkCoarseModel"),
    _sub_model("fine_acoustics", hub.build_fine_acoustics, "BarkFineModel"),
)
