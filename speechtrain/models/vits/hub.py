"""Hugging Face-format VITS folders (MMS-style `config.json` + `model.safetensors`) in and out.

Weight-norm naming: transformers stores the WaveNet convolutions as `parametrizations.weight.original0/1`
(older checkpoints, e.g. `facebook/mms-tts-*`, as `weight_g/weight_v`) and the HiFi-GAN convolutions as plain
`weight`. Our decoder trains with weight norm, so its convolutions are folded into `weight` on the way out and
split into (norm, direction) on the way in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import parametrize

from speechtrain.hub import (
    build_values,
    check_state_dict,
    fit_tokenizer,
    load_config,
    read_state_dict,
    write_model_folder,
)
from speechtrain.models.vits.config import VitsConfig
from speechtrain.models.vits.modeling import VitsModel

logger = logging.getLogger(__name__)

NORM, DIRECTION = "parametrizations.weight.original0", "parametrizations.weight.original1"
LEGACY_NAMES = {".weight_g": "." + NORM, ".weight_v": "." + DIRECTION}


def _weight_normed_modules(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.nn.Module]:
    """The weight-normed submodules of `module`, keyed by their state-dict prefix (`prefix` + name + ".")."""
    return {f"{prefix}{name}.": sub for name, sub in module.named_modules()
            if parametrize.is_parametrized(sub, "weight")}


def state_dict_to_hf(model: VitsModel) -> dict[str, torch.Tensor]:
    """Our state dict with the decoder's weight norm folded in: exactly transformers' `VitsModel` keys."""
    state = {key: value.detach() for key, value in model.state_dict().items()}
    for prefix, module in _weight_normed_modules(model.decoder, "decoder.").items():
        del state[prefix + NORM], state[prefix + DIRECTION]
        state[prefix + "weight"] = module.weight.detach()
    return state


def _kernel_norm(weight: torch.Tensor) -> torch.Tensor:
    """The norm of `weight` (over all dimensions but 0) as weight norm's own kernel computes it: with it as the
    norm and `weight` as the direction the parametrisation gives back `weight` bit for bit, so a folder saved,
    loaded and saved again is unchanged (`torch.norm_except_dim`, what `right_inverse` uses, can differ from the
    fused kernel in the last bit)."""
    _, norm = torch._weight_norm_interface(weight, torch.norm_except_dim(weight, 2, 0), 0)
    return norm.reshape(weight.shape[0], *([1] * (weight.dim() - 1)))


def state_dict_from_hf(model: VitsModel, hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers `VitsModel` state dict (either weight-norm naming) renamed to ours; keys are not checked.
    A weight-normed convolution given as a plain `weight` (transformers' decoder; a weight-folded export such as
    Piper's ONNX) is split into its norm and direction."""
    state = {}
    for key, value in hf_state.items():
        for legacy, current in LEGACY_NAMES.items():
            if key.endswith(legacy):
                key = key[: -len(legacy)] + current
        state[key] = value
    for prefix in _weight_normed_modules(model):
        if prefix + "weight" in state:
            weight = state.pop(prefix + "weight")
            state[prefix + NORM] = _kernel_norm(weight)
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


def load_pretrained(path: str | Path, overrides: Mapping[str, Any] | None = None) -> VitsModel:
    """Loads a transformers-format VITS folder as a float32 model (in training mode, like any new module).

    `overrides` replace `config.json` values before building (e.g. dropouts or layerdrop for fine-tuning,
    `attn_implementation`); they must be VitsConfig fields.
    """
    model = VitsModel(load_config(path, VitsConfig, overrides))
    state = read_state_dict(path)
    load_hf_state_dict(model, {key: value.float() for key, value in state.items()}, where=str(path))
    return model


def save_pretrained(model: VitsModel, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` that transformers' `VitsModel.from_pretrained` loads (when
    transformers can hold the layout: a warning says when it cannot)."""
    if not model.config.transformers_compatible:
        logger.warning("%s: resblock_type=%d (HiFi-GAN V2, Piper's lighter voices) is not in transformers' VitsModel: "
                       "this folder loads in speechtrain and exports to Piper (speechtrain-export --format piper), "
                       "but transformers would misread it", path, model.config.resblock_type)
    write_model_folder(path, model.config.to_hf_dict(), state_dict_to_hf(model))


def build_vits(
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any = None,
) -> VitsModel:
    """The builder Hydra configs point at: from scratch (`config` over the defaults; vocabulary size and pad id
    from the `tokenizer` when one is given) or from a Hugging Face-format folder (`pretrained`) whose vocabulary
    the tokenizer must fit; `overrides` replace values of either (e.g. dropouts, `attn_implementation`)."""
    values = build_values(config, pretrained, overrides, "build_vits")
    if pretrained is not None:
        return fit_tokenizer(load_pretrained(pretrained, values), tokenizer, pretrained)
    if tokenizer is not None:
        values.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_id)
    return VitsModel(VitsConfig(**values))
