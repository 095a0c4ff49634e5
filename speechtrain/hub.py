"""Hugging Face-format folders: which model family a folder holds, and loading or saving all of it.

A folder is a model (`config.json` + `model.safetensors`), its tokenizer files and its feature
extractor's `preprocessor_config.json`. Families register here by their `model_type`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Family:
    """Where a family's pieces live, as `module:attribute` strings so that importing one loads one."""

    model_hub: str  # module with load_pretrained(path), save_pretrained(model, path), model_from_hf_config(dict)
    tokenizer: str  # class with from_pretrained(path) and save_pretrained(path)
    feature_extractor: str | None = None  # the same, for families that have one (ASR)


FAMILIES: dict[str, Family] = {
    "whisper": Family(
        model_hub="speechtrain.models.whisper.hub",
        tokenizer="speechtrain.data.tokenizers:WhisperTokenizer",
        feature_extractor="speechtrain.data.features:WhisperFeatureExtractor",
    ),
    "speech_to_text": Family(
        model_hub="speechtrain.models.speech2text.hub",
        tokenizer="speechtrain.data.tokenizers:Speech2TextTokenizer",
        feature_extractor="speechtrain.data.features:Speech2TextFeatureExtractor",
    ),
    "vits": Family(model_hub="speechtrain.models.vits.hub", tokenizer="speechtrain.data.text:VitsTextTokenizer"),
}


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def read_model_type(folder: str | Path) -> str:
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face-format model folder")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not supported; known: {', '.join(sorted(FAMILIES))}"
        )
    return model_type


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def load_processors(folder: str | Path, **tokenizer_kwargs: Any) -> tuple[Any, Any]:
    """(tokenizer, feature_extractor) from a Hugging Face-format folder."""
    family = family_of(read_model_type(folder))
    tokenizer = _resolve(family.tokenizer).from_pretrained(str(folder), **tokenizer_kwargs)
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
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2, sort_keys=True) + "\n")
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
    config = json.loads((Path(folder) / "config.json").read_text())
    return _resolve(family.model_hub).model_from_hf_config(config)
