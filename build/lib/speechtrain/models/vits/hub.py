"""Hugging Face-format VITS folders (MMS-style `config.json` + `model.safetensors`) in and out.

Weight-norm naming: transformers stores the WaveNet convolutions as `parametrizations.weight.original0/1`
(older checkpoints, e.g. `facebook/mms-tts-*`, as `weight_g/weight_v`) and the HiFi-GAN convolutions as plain
`weight`. Our decoder trains with weight norm, so its convolutions are folded into `weight` on the way out and
split into (norm, direction) on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import parametrize

from speechtrain.hub import check_state_dict, check_tokenizer_fits, load_config, read_state_dict, write_model_folder
from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.vits.modeling import VitsModel

NORM, DIRECTION = "parametrizations.weight.original0", "parametrizations.weight.original1"
LEGACY_NAMES = {".weight_g": "." + NORM, ".weight_v": "." + DIRECTION}


def _weight_normed_decoder_modules(model: VitsModel) -> dict[str, torch.nn.Module]:
    return {f"decoder.{name}.": module for name, module in model.decoder.named_modules()
            if parametrize.is_parametrized(module, "weight")}


def state_dict_to_hf(model: VitsModel) -> dict[str, torch.Tensor]:
    """Our state dict with the decoder's weight norm folded in: exactly transformers' `VitsModel` keys."""
    state = {key: value.detach() for key, value in model.state_dict().items()}
    for prefix, module in _weight_normed_decoder_modules(model).items():
        del state[prefix + NORM], state[prefix + DIRECTION]
        state[prefix + "weight"] = module.weight.detach()
    return state


def state_dict_from_hf(model: VitsModel, hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers `VitsModel` state dict (either weight-norm naming) renamed to ours; keys are not checked."""
    state = {}
    for key, value in hf_state.items():
        for legacy, current in LEGACY_NAMES.items():
            if key.endswith(legacy):
                key = key[: -len(legacy)] + current
        state[key] = value
    for prefix in _weight_normed_decoder_modules(model):
        if prefix + "weight" in state:
            weight = state.pop(prefix + "weight")
            state[prefix + NORM] = torch.norm_except_dim(weight, 2, 0)  # what weight_norm's right_inverse does
            state[prefix + DIRECTION] = weight
    return state


def load_hf_state_dict(model: VitsModel, hf_state: Mapping[str, torch.Tensor], where: str = "state dict") -> None:
    """Loads transformers-named weights into `model`; every key must match by name and shape."""
    state = state_dict_from_hf(model, hf_state)
    check_state_dict(model, state, where)
    model.load_state_dict(state, strict=True)


def model_from_hf_config(hf_config: Mapping[str, Any]) -> VitsModel:
    """A randomly initialised model of the architecture in a transformers `config.json` dict."""
    return VitsModel(VitsConfig.from_hf_dict(dict(hf_config)))


def load_pretrained(path: str | Path, config_overrides: Mapping[str, Any] | None = None) -> VitsModel:
    """Loads a transformers-format VITS folder as a float32 model (in training mode, like any new module).

    `config_overrides` replace `config.json` values before building (e.g. dropouts or layerdrop for
    fine-tuning); they must be VitsConfig fields.
    """
    model = VitsModel(load_config(path, VitsConfig, config_overrides))
    state = read_state_dict(path)
    load_hf_state_dict(model, {key: value.float() for key, value in state.items()}, where=str(path))
    return model


def save_pretrained(model: VitsModel, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` that transformers' `VitsModel.from_pretrained` loads."""
    write_model_folder(path, model.config.to_hf_dict(), state_dict_to_hf(model))


def build_vits(
    tokenizer: Any, config: Mapping[str, Any] | None = None, pretrained: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> VitsModel:
    """The builder Hydra configs point at: from scratch (vocabulary size and pad id from the tokenizer)
    or from a Hugging Face-format folder (`pretrained`) whose vocabulary the tokenizer must fit."""
    if pretrained is not None:
        model = load_pretrained(pretrained, config_overrides)
        check_tokenizer_fits(len(tokenizer), model.config.vocab_size, str(pretrained))
        return model
    values = {**(config or {}), **(config_overrides or {}), "vocab_size": len(tokenizer),
              "pad_token_id": tokenizer.pad_id}
    return VitsModel(VitsConfig(**values))
