"""The one contract every model family fills, and the registry that finds the families.

A family describes each of its model types (the `model_type` of its `config.json`) with a `ModelFamily` record in
`speechtrain/models/<family>/family.py`, as a module-level tuple `MODEL_FAMILIES`. The registry imports the
`family` module of every subpackage of `speechtrain.models` the first time it is asked, so generic code (hub, model
card, distributed training, the entry point, the command lines) reads the families from here and never names one;
a sixth family adds its folder and nothing else. Plain Python: no Lightning or Hydra here.

The contract, the same for every family:

- `build(config=None, pretrained=None, overrides=None)`: the builder Hydra's model configs point at; a model from
  scratch (`config`: config-class fields over its defaults) or from a `pretrained` folder, with `overrides`
  replacing values of either. Families whose vocabulary comes from a text tokenizer also take a keyword-only
  `tokenizer` (the entry point passes it only to builders that take it).
- `load_pretrained(path, overrides=None)` and `save_pretrained(model, path)`: a Hugging Face-format folder in and
  out; `model_from_hf_config(dict)`: a random model of a `config.json`'s architecture.
- `overrides={"attn_implementation": name}` (eager, sdpa, flash_attention_2) chooses the attention of every family:
  it is a field of every config class, kept out of `config.json`.
- The model classes list their repeated blocks in a `block_classes` class attribute (FSDP and activation
  checkpointing units, read by `speechtrain.distributed.block_classes`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from speechtrain.errors import CheckpointError, ConfigError

FAMILY_MODULE = "family"  # the module of a family's folder that holds its MODEL_FAMILIES


@dataclass(frozen=True)
class ModelCard:
    """What the exported folder's README.md says about a model type: its Hugging Face pipeline tag, the library
    that loads the folder and the line that loads it."""

    pipeline_tag: str
    library: str
    load: str


@dataclass(frozen=True)
class ModelFamily:
    """One model type of a family: its config class, builder, folder load/save, processors and model card.

    `tokenizer` and `feature_extractor` are `module:Class` paths (classes with `from_pretrained(folder)` and
    `save_pretrained(folder)`), resolved only when a folder of this type is loaded; None when the model reads
    token ids only (tokenizer) or has no audio front end (feature extractor). `pretrained_example` says where a
    user finds a folder for `model.pretrained`. `export_formats` maps a deployment format other than the Hugging
    Face folder (`speechtrain-export --format NAME`) to a `module:function` path of
    `function(model_folder, out_dir) -> list[Path]`. `semantic_quantizers` maps a trained HuBERT-feature quantizer
    whose ids this model type reads (`speechtrain-tokenize --semantic NAME`) to a `module:function` path of
    `function(checkpoint) -> speechtrain.data.semantic.SemanticQuantizer`.
    """

    model_type: str
    config_class: type
    build: Callable[..., nn.Module]
    load_pretrained: Callable[..., nn.Module]
    save_pretrained: Callable[[nn.Module, str | Path], None]
    model_from_hf_config: Callable[[Mapping[str, Any]], nn.Module]
    card: ModelCard
    tokenizer: str | None = None
    feature_extractor: str | None = None
    pretrained_example: str = ""
    export_formats: Mapping[str, str] = field(default_factory=dict)
    semantic_quantizers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_hub(cls, hub: ModuleType, model_type: str, config_class: type, build: Callable[..., nn.Module],
                 card: ModelCard, **options: Any) -> ModelFamily:
        """The record of a family whose `hub` module defines the contract's `load_pretrained`, `save_pretrained` and
        `model_from_hf_config`; `options` are the optional fields (tokenizer, feature_extractor,
        pretrained_example, export_formats, semantic_quantizers)."""
        return cls(model_type, config_class, build, hub.load_pretrained, hub.save_pretrained, hub.model_from_hf_config,
                   card, **options)

    @property
    def builder_path(self) -> str:
        """The dotted path a Hydra model config's `_target_` names for this builder."""
        return f"{self.build.__module__}.{self.build.__name__}"

    def tokenizer_class(self) -> Any:
        return None if self.tokenizer is None else resolve(self.tokenizer)

    def feature_extractor_class(self) -> Any:
        return None if self.feature_extractor is None else resolve(self.feature_extractor)


_registered: dict[str, ModelFamily] = {}
_discovered = False


def resolve(path: str) -> Any:
    """The object a `module:attribute` path names (the module itself without `:attribute`)."""
    module, _, attribute = path.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def register(*families: ModelFamily) -> None:
    """Adds model types to the registry (the families under `speechtrain.models` are found without it; this is
    for one defined elsewhere). Raises a ConfigError when a model type is already taken by another record."""
    for family in families:
        known = _registered.get(family.model_type)
        if known is not None and known != family:
            raise ConfigError(f"model_type {family.model_type!r} is registered twice: by {known.builder_path} and by "
                              f"{family.builder_path}")
        _registered[family.model_type] = family


def _discover() -> None:
    """Imports `speechtrain.models.<name>.family` for every subpackage that has one and registers its records."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
        name = f"{__package__}.{info.name}.{FAMILY_MODULE}"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            register(*importlib.import_module(name).MODEL_FAMILIES)


def families() -> dict[str, ModelFamily]:
    """Every registered model type, by `model_type`."""
    _discover()
    return dict(_registered)


def get_family(model_type: str, where: str = "") -> ModelFamily:
    """The record of `model_type`; a CheckpointError naming `where` (a file) and the known types otherwise."""
    known = families()
    if model_type not in known:
        prefix = f"{where}: " if where else ""
        raise CheckpointError(f"{prefix}model_type {model_type!r} is not supported; known: {', '.join(sorted(known))}")
    return known[model_type]


def family_of_builder(target: str) -> ModelFamily | None:
    """The record whose builder a Hydra `_target_` names, or None; matched by the function's name, which is unique
    across families, since a target may name the builder where its package re-exports it."""
    name = target.rpartition(".")[2]
    return next((family for family in families().values() if family.build.__name__ == name), None)


def semantic_quantizers() -> dict[str, str]:
    """Every family's semantic quantizers: name -> `module:function` loader path."""
    return {name: path for family in families().values() for name, path in family.semantic_quantizers.items()}
