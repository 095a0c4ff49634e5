"""SoundStorm's entry in the model registry (`speechtrain.models.registry`): a codec-token model, so no tokenizer
and no feature extractor; transformers has no SoundStorm, so speechtrain loads its folders."""

from speechtrain.models.registry import ModelCard, ModelFamily
from speechtrain.models.soundstorm import hub
from speechtrain.models.soundstorm.config import SoundStormConfig

CARD = ModelCard("audio-to-audio", "speechtrain", "speechtrain.models.soundstorm.load_pretrained(folder)")
MODEL_FAMILIES = (ModelFamily.from_hub(hub, "soundstorm", SoundStormConfig, hub.build_soundstorm, CARD),)
