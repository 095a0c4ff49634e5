"""Hugging Face-format Bark sub-model folders (`config.json` + `model.safetensors`) in and out, and the builder
that Hydra configs point at. The folder's `model_type` decides the sub-model: `semantic` and `coarse_acoustics`
are `BarkCausalModel`s, `fine_acoustics` a `BarkFineModel`.

transformers stores the causal models' attention-mask buffers (`layers.N.attn.bias`, a lower-triangular
`[1, 1, block_size, block_size]` bool tensor) with the weights and leaves out the fine model's tied heads; both
are dropped on the way in and the buffers written back on the way out, so each side loads the other's folders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from speechtrain.errors import CheckpointError, ConfigError
from speechtrain.hub import build_values, check_state_dict, load_config, read_state_dict, write_model_folder
from speechtrain.models.bark.config import BarkSubModelConfig
from speechtrain.models.bark.modeling import BarkCausalModel, BarkFineModel

BarkModel = BarkCausalModel | BarkFineModel
MASK_BUFFER = re.compile(r"layers\.\d+\.attn\.bias")


def model_from_config(config: BarkSubModelConfig) -> BarkModel:
    return BarkFineModel(config) if config.is_fine else BarkCausalModel(config)


def model_from_hf_config(hf_config: Mapping[str, Any]) -> BarkModel:
    """A randomly initialised sub-model of the architecture in a transformers `config.json` dict."""
    return model_from_config(BarkSubModelConfig.from_hf_dict(hf_config))


def _tied_keys(model: BarkModel) -> list[str]:
    return model.tied_keys() if isinstance(model, BarkFineModel) else []


def load_hf_state_dict(model: BarkModel, hf_state: Mapping[str, torch.Tensor], where: str = "state dict") -> None:
    """Loads transformers-named weights into `model` (float32); every key must match by name and shape, except the
    causal-mask buffers (ignored) and tied heads (may be absent, tied again after loading)."""
    state = {key: value.float() for key, value in hf_state.items() if not MASK_BUFFER.fullmatch(key)}
    tied = _tied_keys(model)
    check_state_dict(model, state, where, optional=tied)
    model.load_state_dict({key: value for key, value in state.items() if key not in tied}, strict=False)
    if isinstance(model, BarkFineModel):
        model.tie_weights()


def load_pretrained(path: str | Path, overrides: Mapping[str, Any] | None = None) -> BarkModel:
    """Loads a transformers-format semantic, coarse or fine folder as a float32 model. `overrides` replace
    `config.json` values (BarkSubModelConfig fields: e.g. `dropout` for fine-tuning, `attn_implementation`)."""
    config = load_config(path, BarkSubModelConfig, overrides)
    with torch.device("meta"):
        model = model_from_config(config)
    model = model.to_empty(device="cpu")
    load_hf_state_dict(model, read_state_dict(path), where=str(path))
    return model


def state_dict_to_hf(model: BarkModel) -> dict[str, torch.Tensor]:
    """Our weights under transformers' keys: tied heads left out, causal-mask buffers added."""
    tied = set(_tied_keys(model))
    state = {key: value for key, value in model.state_dict().items() if key not in tied}
    if isinstance(model, BarkCausalModel):
        size = model.config.block_size
        mask = torch.ones(size, size, dtype=torch.bool).tril().view(1, 1, size, size)
        state.update({f"layers.{index}.attn.bias": mask.clone() for index in range(model.config.num_layers)})
    return state


def save_pretrained(model: BarkModel, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` that transformers' `BarkSemanticModel` / `BarkCoarseModel` /
    `BarkFineModel.from_pretrained` load."""
    write_model_folder(path, model.config.to_hf_dict(), state_dict_to_hf(model))


def _build(
    model_type: str, config: Mapping[str, Any] | None, pretrained: str | Path | None,
    overrides: Mapping[str, Any] | None,
) -> BarkModel:
    """What the three builders share: the sub-model is fixed by the builder, so a folder of another one (all three
    are `BarkSubModelConfig`s) is refused instead of loaded."""
    values = build_values(config, pretrained, overrides, f"build_{model_type}")
    if pretrained is not None:
        model = load_pretrained(pretrained, values)
        if model.config.model_type != model_type:
            raise CheckpointError(f"{pretrained}: holds a {model.config.model_type!r} model, not {model_type!r}")
        return model
    if values.get("model_type", model_type) != model_type:
        raise ConfigError(f"build_{model_type}: config model_type={values['model_type']!r} contradicts the "
                          f"builder's {model_type!r}")
    return model_from_config(BarkSubModelConfig(**{**values, "model_type": model_type}))


def build_semantic(
    config: Mapping[str, Any] | None = None, pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> BarkCausalModel:
    """The builder Hydra configs point at for the semantic model (text -> semantic tokens): from scratch (`config`
    over transformers' defaults) or from a `pretrained` folder; `overrides` replace values of either (e.g.
    dropout, `attn_implementation`)."""
    return _build("semantic", config, pretrained, overrides)


def build_coarse_acoustics(
    config: Mapping[str, Any] | None = None, pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> BarkCausalModel:
    """`build_semantic` for the coarse model (semantic tokens -> EnCodec codebooks 0-1)."""
    return _build("coarse_acoustics", config, pretrained, overrides)


def build_fine_acoustics(
    config: Mapping[str, Any] | None = None, pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> BarkFineModel:
    """`build_semantic` for the fine model (codebooks 0-1 -> all 8 EnCodec codebooks)."""
    return _build("fine_acoustics", config, pretrained, overrides)
