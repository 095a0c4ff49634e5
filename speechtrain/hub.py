"""Hugging Face-format folders: which model family a folder holds, and loading or saving all of it.

A folder is a model (`config.json` + `model.safetensors`), its tokenizer files and its feature
extractor's `preprocessor_config.json`. Families register here by their `model_type`; their `hub` modules read
and write the model part with the shared functions below (config with overrides, weights, strict key check).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from speechtrain.errors import CheckpointError, ConfigError
from speechtrain.safe_load import load_untrusted

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"


class AsrTokenizer(Protocol):
    """What the ASR model builders read from a tokenizer."""

    prefix_ids: list[int]
    eos_id: int
    pad_id: int

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Family:
    """Where a family's pieces live, as `module:attribute` strings so that importing one loads one."""

    model_hub: str  # module with load_pretrained(path), save_pretrained(model, path), model_from_hf_config(dict)
    tokenizer: str | None  # class with from_pretrained(path) and save_pretrained(path); None for token-only models
    feature_extractor: str | None = None  # the same, for families that have one (ASR)


FAMILIES: dict[str, Family] = {
    "whisper": Family(
        model_hub="speechtrain.models.whisper.hub",
        tokenizer="speechtrain.models.whisper.tokenizer:WhisperTokenizer",
        feature_extractor="speechtrain.models.whisper.features:WhisperFeatureExtractor",
    ),
    "speech_to_text": Family(
        model_hub="speechtrain.models.speech2text.hub",
        tokenizer="speechtrain.models.speech2text.tokenizer:Speech2TextTokenizer",
        feature_extractor="speechtrain.models.speech2text.features:Speech2TextFeatureExtractor",
    ),
    "vits": Family(model_hub="speechtrain.models.vits.hub",
                   tokenizer="speechtrain.models.vits.tokenizer:VitsTextTokenizer"),
    # Codec-token models: SoundStorm reads and writes token ids only; Bark's semantic model reads text.
    "soundstorm": Family(model_hub="speechtrain.models.soundstorm.hub", tokenizer=None),
    "semantic": Family(model_hub="speechtrain.models.bark.hub",
                       tokenizer="speechtrain.models.bark.tokenizer:BarkTextTokenizer"),
    "coarse_acoustics": Family(model_hub="speechtrain.models.bark.hub", tokenizer=None),
    "fine_acoustics": Family(model_hub="speechtrain.models.bark.hub", tokenizer=None),
}


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def read_model_type(folder: str | Path) -> str:
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face-format model folder")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not supported; known: {', '.join(sorted(FAMILIES))}"
        )
    return model_type


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(f"model_type {model_type!r} is not supported; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def load_processors(folder: str | Path, **tokenizer_kwargs: Any) -> tuple[Any, Any]:
    """(tokenizer, feature_extractor) from a Hugging Face-format folder."""
    family = family_of(read_model_type(folder))
    tokenizer = None if family.tokenizer is None else _resolve(family.tokenizer).from_pretrained(
        str(folder), **tokenizer_kwargs)
    if family.feature_extractor is None:
        return tokenizer, None
    return tokenizer, _resolve(family.feature_extractor).from_pretrained(str(folder))


def load_bundle(
    folder: str | Path, tokenizer_kwargs: dict[str, Any] | None = None, **model_kwargs: Any
) -> tuple[nn.Module, Any, Any]:
    """(model, tokenizer, feature_extractor or None) from a Hugging Face-format folder."""
    family = family_of(read_model_type(folder))
    model = _resolve(family.model_hub).load_pretrained(str(folder), **model_kwargs)
    return (model, *load_processors(folder, **(tokenizer_kwargs or {})))


def save_support_files(folder: str | Path, model: nn.Module, tokenizer: Any, feature_extractor: Any = None) -> None:
    """Everything of the folder except the weights: config.json, tokenizer and preprocessor files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_hf_dict(), indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    if feature_extractor is not None:
        feature_extractor.save_pretrained(str(folder))


def save_bundle(folder: str | Path, model: nn.Module, tokenizer: Any, feature_extractor: Any = None) -> None:
    """A complete Hugging Face-format folder that transformers loads."""
    save_support_files(folder, model, tokenizer, feature_extractor)
    family = family_of(model.config.to_hf_dict()["model_type"])
    _resolve(family.model_hub).save_pretrained(model, str(folder))


def model_from_folder_config(folder: str | Path) -> nn.Module:
    """A randomly initialised model of the architecture in `folder/config.json` (weights loaded later)."""
    family = family_of(read_model_type(folder))
    config = json.loads((Path(folder) / CONFIG_NAME).read_text())
    return _resolve(family.model_hub).model_from_hf_config(config)


def check_config_keys(values: Mapping[str, Any], config_class: type, where: str) -> None:
    """Raises a ValueError naming `where` if `values` has keys that are not fields of the `config_class`
    dataclass."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown {config_class.__name__} keys {unknown}; valid keys are {sorted(known)}")


def load_config(folder: str | Path, config_class: Any, overrides: Mapping[str, Any] | None = None) -> Any:
    """`config_class.from_hf_dict` of `folder/config.json` with `overrides` (config fields, e.g. dropout for
    fine-tuning) replacing its values; errors name the file."""
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; expected a Hugging Face-format model folder")
    hf_config = json.loads(config_path.read_text())
    if overrides:
        check_config_keys(overrides, config_class, f"overrides for {config_path}")
        hf_config.update(overrides)
    try:
        return config_class.from_hf_dict(hf_config)
    except ValueError as error:
        raise CheckpointError(f"{config_path}: {error}") from error


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights of `folder`: `model.safetensors`, sharded safetensors (with their index) or `pytorch_model.bin`."""
    folder = Path(folder)
    if (folder / SAFETENSORS_NAME).is_file():
        return load_file(folder / SAFETENSORS_NAME)
    if (folder / SAFETENSORS_INDEX_NAME).is_file():
        shards = sorted(set(json.loads((folder / SAFETENSORS_INDEX_NAME).read_text())["weight_map"].values()))
        return {key: value for shard in shards for key, value in load_file(folder / shard).items()}
    if (folder / PYTORCH_NAME).is_file():
        return load_untrusted(folder / PYTORCH_NAME, "state dict")
    raise FileNotFoundError(
        f"{folder}: no weights found; expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {PYTORCH_NAME}"
    )


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], where: str, optional: Collection[str] = ()
) -> None:
    """Raises a ValueError listing every missing (except `optional`, e.g. tied), unexpected and mis-shaped key of
    `state` against `model`, so a wrong checkpoint fails at once with the whole picture rather than key by key."""
    expected = {key: value.shape for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key])}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key]
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{where}: weights do not fit {type(model).__name__} built from its {CONFIG_NAME}: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {wrong_shape}"
        )


def write_model_folder(
    folder: str | Path, config_dict: Mapping[str, Any], state: Mapping[str, torch.Tensor], skip: Collection[str] = ()
) -> None:
    """Writes `config.json` and `model.safetensors`, leaving out the keys in `skip` (tied weights, which
    transformers does not store either)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2) + "\n")
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items() if key not in skip}
    save_file(tensors, folder / SAFETENSORS_NAME, metadata={"format": "pt"})


def check_tokenizer_fits(tokenizer_size: int, vocab_size: int, where: str) -> None:
    """A pretrained model's embedding must have a row for every token of the tokenizer."""
    if tokenizer_size > vocab_size:
        raise ConfigError(f"{where}: the tokenizer has {tokenizer_size} tokens but the model's vocab_size is "
                         f"{vocab_size}; use the folder's own tokenizer")


def scratch_vocab_size(tokenizer: Any, values: Mapping[str, Any], config_class: type, where: str) -> int:
    """Checks the keys of a from-scratch model config and returns its `vocab_size`: the config's, which must
    hold the tokenizer, or the tokenizer's size."""
    check_config_keys(values, config_class, where)
    vocab_size = values.get("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ConfigError(f"{where}: vocab_size={vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    return vocab_size


def load_tied_model(
    path: str | Path,
    model_class: Any,
    config_class: Any,
    tied_key: str,
    config_overrides: Mapping[str, Any] | None = None,
    **model_kwargs: Any,
) -> Any:
    """`model_class(config, **model_kwargs)` with the weights of folder `path`, every key checked; `tied_key` (the
    output head tied to the token embedding) may be absent when `config.tie_word_embeddings`. The model is built
    on the meta device, so no time goes into initialising weights that are about to be replaced; buffers outside
    the state dict are the caller's to rebuild."""
    config = load_config(path, config_class, config_overrides)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = model_class(config, **model_kwargs)
    check_state_dict(model, state, str(path), optional={tied_key} if config.tie_word_embeddings else ())
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model


def save_tied_model(model: nn.Module, path: str | Path, tied_key: str) -> None:
    """Writes `config.json` and `model.safetensors`, without `tied_key` when it is tied (as transformers)."""
    write_model_folder(path, model.config.to_hf_dict(), model.state_dict(),
                       skip={tied_key} if model.config.tie_word_embeddings else ())
