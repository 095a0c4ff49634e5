"""Every family's config (and the SpecAugment layers) checks its fields the same way, through
`speechtrain.layers.config_fields`: a boolean is no integer, and the error names the class, field and value."""

from __future__ import annotations

import pytest

from speechtrain.errors import ConfigError
from speechtrain.layers.specaugment import FilterbankSpecAugment, SpecAugment
from speechtrain.models.bark.config import BarkSubModelConfig
from speechtrain.models.soundstorm.config import SoundStormConfig
from speechtrain.models.speech2text.config import Speech2TextConfig
from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.whisper.config import WhisperConfig

POSITIVE_INT_FIELDS = [
    (WhisperConfig, "encoder_layers"),
    (WhisperConfig, "vocab_size"),
    (Speech2TextConfig, "decoder_layers"),
    (Speech2TextConfig, "input_channels"),
    (VitsConfig, "num_hidden_layers"),
    (SoundStormConfig, "depth"),
    (BarkSubModelConfig, "num_layers"),
    (SpecAugment, "mask_time_length"),
]


@pytest.mark.parametrize(("config_class", "name"), POSITIVE_INT_FIELDS)
def test_a_boolean_is_not_a_positive_integer(config_class: type, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{config_class.__name__}\.{name} must be a positive integer, got True$"):
        config_class(**{name: True})


@pytest.mark.parametrize(("config_class", "name"), POSITIVE_INT_FIELDS)
def test_zero_is_not_a_positive_integer(config_class: type, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{config_class.__name__}\.{name} must be a positive integer, got 0"):
        config_class(**{name: 0})


@pytest.mark.parametrize(("config_class", "name"), [
    (VitsConfig, "window_size"),
    (SoundStormConfig, "num_semantic_tokens"),
    (FilterbankSpecAugment, "time_mask_t"),
])
def test_a_boolean_is_not_a_count(config_class: type, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{config_class.__name__}\.{name} must be a non-negative integer"):
        config_class(**{name: False})


@pytest.mark.parametrize(("config_class", "name", "value", "interval"), [
    (WhisperConfig, "dropout", 1.0, r"\[0, 1\)"),
    (Speech2TextConfig, "attention_dropout", -0.1, r"\[0, 1\)"),
    (VitsConfig, "wavenet_dropout", 1.0, r"\[0, 1\)"),
    (SoundStormConfig, "ff_dropout", 1.5, r"\[0, 1\)"),
    (BarkSubModelConfig, "dropout", True, r"\[0, 1\)"),
    (SpecAugment, "mask_time_prob", 1.5, r"\[0, 1\]"),
    (FilterbankSpecAugment, "time_mask_p", -0.5, r"\[0, 1\]"),
])
def test_probabilities_out_of_range_are_refused(config_class: type, name: str, value: float, interval: str) -> None:
    with pytest.raises(ConfigError, match=rf"{config_class.__name__}\.{name}={value!r} must be in {interval}"):
        config_class(**{name: value})


def test_a_probability_of_one_is_allowed_where_it_is_a_share() -> None:
    assert SpecAugment(mask_time_prob=1.0).enabled
    assert FilterbankSpecAugment(time_mask_p=1.0).time_mask_p == 1.0


@pytest.mark.parametrize(("config_class", "values", "message"), [
    (WhisperConfig, {"activation_function": "tanh"}, "WhisperConfig.activation_function='tanh' is not one of"),
    (VitsConfig, {"hidden_act": "elu"}, "VitsConfig.hidden_act='elu' is not one of"),
    (BarkSubModelConfig, {"model_type": "fine"}, "BarkSubModelConfig.model_type='fine' is not one of"),
    (SpecAugment, {"time_dim": 0}, r"SpecAugment.time_dim=0 is not one of \(1, 2\)"),
    (Speech2TextConfig, {"d_model": 258}, "Speech2TextConfig.d_model=258 must be divisible by "
                                          "encoder_attention_heads=4"),
    (VitsConfig, {"pad_token_id": 38}, r"VitsConfig.pad_token_id=38 must be None or an id inside the "
                                       r"vocabulary \[0, 38\)"),
    (WhisperConfig, {"eos_token_id": True}, "WhisperConfig.eos_token_id=True must be an id inside the vocabulary"),
    (SoundStormConfig, {"acoustic_rate": 0.0}, r"SoundStormConfig.acoustic_rate=0.0 must be positive \(in Hz\)"),
])
def test_other_checks_name_the_class_field_and_value(config_class: type, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_class(**values)


@pytest.mark.parametrize("config_class", [WhisperConfig, Speech2TextConfig, VitsConfig, SoundStormConfig,
                                          BarkSubModelConfig, SpecAugment, FilterbankSpecAugment])
def test_the_defaults_pass(config_class: type) -> None:
    config_class()
