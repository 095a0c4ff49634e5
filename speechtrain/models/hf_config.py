"""Reading `config.json` dicts into the models' config dataclasses, the same way for every family."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from speechtrain.errors import CheckpointError

# Config fields that say how to run the model, not what it is: kept out of `config.json` (transformers keeps its
# `_attn_implementation` out too), so a folder loads with whichever kernel the loading machine has.
RUNTIME_FIELDS = frozenset({"attn_implementation"})


def known_fields(config_class: type, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of `values` that are fields of the `config_class` dataclass; the rest (`architectures`, keys
    of transformers that this model does not use) are dropped."""
    known = {field.name for field in dataclasses.fields(config_class)}
    return {key: value for key, value in (values or {}).items() if key in known}


def hf_config_fields(config_class: type, hf_config: Mapping[str, Any], model_types: Sequence[str]) -> dict[str, Any]:
    """`known_fields` of a `config.json` dict whose `model_type` is one of `model_types`; a family with a single
    type accepts a dict without `model_type`. Raises a ValueError naming the type found and the ones expected."""
    model_type = hf_config.get("model_type", model_types[0] if len(model_types) == 1 else None)
    if model_type not in model_types:
        expected = repr(model_types[0]) if len(model_types) == 1 else f"one of {tuple(model_types)}"
        raise CheckpointError(f"config has model_type={model_type!r}, expected {expected}")
    return known_fields(config_class, hf_config)


def saved_fields(config: Any) -> dict[str, Any]:
    """The fields of a config dataclass that go into `config.json`: all but the `RUNTIME_FIELDS`."""
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in RUNTIME_FIELDS}


def encoder_decoder_hf_dict(config: Any, architecture: str, model_type: str) -> dict[str, Any]:
    """The `config.json` dict of a transformers encoder-decoder (Whisper, Speech2Text): the architecture, the model
    type, the cache flag transformers' generation reads, and the fields `saved_fields` keeps."""
    return {"architectures": [architecture], "model_type": model_type, "is_encoder_decoder": True, "use_cache": True,
            **saved_fields(config)}
