"""Hugging Face-format folders: which model family a folder holds, and loading or saving all of it.

A folder is a model (`config.json` + `model.safetensors`), its tokenizer files and its feature
extractor's `preprocessor_config.json`. Which family a folder holds comes from its `model_type` through the model
registry (`speechtrain.models.registry`); the families' `hub` modules read and write the model part with the
shared functions below (config with overrides, weights, strict key check).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from speechtrain.errors import CheckpointError, ConfigError
from speechtrain.hub_ids import resolve_pretrained
from speechtrain.models.registry import get_family
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


def read_model_type(folder: str | Path) -> str:
    """The `model_type` of `folder/config.json`, which must be a registered one."""
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face-format model folder")
    model_type = json.loads(config_path.read_text()).get("model_type")
    return get_family(model_type, str(config_path)).model_type


def load_processors(folder: str | Path, **tokenizer_kwargs: Any) -> tuple[Any, Any]:
    """(tokenizer, feature_extractor) from a Hugging Face-format folder; None for what its family has not."""
    family = get_family(read_model_type(folder))
    tokenizer_class, feature_extractor_class = family.tokenizer_class(), family.feature_extractor_class()
    tokenizer = None if tokenizer_class is None else tokenizer_class.from_pretrained(str(folder), **tokenizer_kwargs)
    features = None if feature_extractor_class is None else feature_extractor_class.from_pretrained(str(folder))
    return tokenizer, features


def load_bundle(
    folder: str | Path, overrides: Mapping[str, Any] | None = None, tokenizer_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, Any, Any]:
    """(model, tokenizer, feature_extractor or None) from a Hugging Face-format folder or Hub id; `overrides` replace
    its config.json values, the same for every family (e.g. `{"attn_implementation": "eager"}`, dropout)."""
    folder = resolve_pretrained(folder)
    model = get_family(read_model_type(folder)).load_pretrained(str(folder), overrides)
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
    get_family(model.config.to_hf_dict()["model_type"]).save_pretrained(model, str(folder))


def model_from_folder_config(folder: str | Path) -> nn.Module:
    """A randomly initialised model of the architecture in `folder/config.json` (weights loaded later)."""
    family = get_family(read_model_type(folder))
    return family.model_from_hf_config(json.loads((Path(folder) / CONFIG_NAME).read_text()))


def build_values(
    config: Mapping[str, Any] | None, pretrained: str | Path | None, overrides: Mapping[str, Any] | None, where: str
) -> dict[str, Any]:
    """The config values a family's `build` starts from: `config` with `overrides` on top for a model from scratch,
    the `overrides` alone (to replace config.json values) for a `pretrained` folder, whose config.json is the
    architecture; `config` and `pretrained` together are refused rather than one silently ignored."""
    if pretrained is not None and config:
        raise ConfigError(f"{where}: config={dict(config)} describes a model from scratch, but pretrained={pretrained} "
                          "is given too; put values that change the folder's config.json under overrides")
    return {**(config or {}), **(overrides or {})}


def fit_tokenizer(model: nn.Module, tokenizer: Any, where: str | Path) -> nn.Module:
    """`model`, after checking that its embedding has a row for every token of `tokenizer` (when there is one)."""
    if tokenizer is not None:
        check_tokenizer_fits(len(tokenizer), model.config.vocab_size, str(where))
    return model


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


@dataclass(frozen=True)
class TiedEncoderDecoderFormat:
    """How an encoder-decoder family whose output head is tied to the token embedding (Whisper's `proj_out`,
    Speech2Text's `lm_head`) reads and writes transformers folders and builds from scratch: one piece of code for
    both, since their folders differ only in the names held here.

    `model_class(config)` builds the model; its `finish_loading()` rebuilds what the state dict does not hold.
    `scratch_token_fields(tokenizer)` gives the family's config values that come from a tokenizer besides the
    vocabulary size, the pad, end and decoder-start ids (which every family takes from it).
    """

    model_class: Any
    config_class: Any
    tied_key: str
    builder_name: str
    scratch_token_fields: Callable[[Any], dict[str, Any]]

    def model_from_hf_config(self, hf_config: Mapping[str, Any]) -> nn.Module:
        """A randomly initialised model of the architecture in a transformers `config.json` dict."""
        return self.model_class(self.config_class.from_hf_dict(dict(hf_config)))

    def load_pretrained(self, path: str | Path, overrides: Mapping[str, Any] | None = None) -> nn.Module:
        """Loads a transformers-format folder as a float32 model; `overrides` replace `config.json` values before
        building (e.g. dropout for fine-tuning, `attn_implementation`). Every weight must match by name and shape;
        only the tied head may be absent. The model is built on the meta device, so no time goes into initialising
        weights that are about to be replaced."""
        config = load_config(path, self.config_class, overrides)
        state = read_state_dict(path)
        with torch.device("meta"):
            model = self.model_class(config)
        check_state_dict(model, state, str(path), optional={self.tied_key} if config.tie_word_embeddings else ())
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        model.finish_loading()
        return model.float()

    def save_pretrained(self, model: nn.Module, path: str | Path) -> None:
        """Writes `config.json` and `model.safetensors`, without the tied head (as transformers)."""
        write_model_folder(path, model.config.to_hf_dict(), model.state_dict(),
                           skip={self.tied_key} if model.config.tie_word_embeddings else ())

    def build(
        self,
        config: Mapping[str, Any] | None,
        pretrained: str | Path | None,
        overrides: Mapping[str, Any] | None,
        tokenizer: AsrTokenizer | None,
    ) -> nn.Module:
        """From scratch (`config` over the defaults) or from a `pretrained` folder, `overrides` over either.

        From scratch, the vocabulary size and the special token ids come from the `tokenizer` when one is given
        (`vocab_size` may be set larger). From a folder, the tokenizer must fit inside the checkpoint's vocabulary,
        except for the tokens it added (`new_token_sources`, e.g. a new language), whose embeddings are grown.
        """
        values = build_values(config, pretrained, overrides, self.builder_name)
        if pretrained is not None:
            model = self.load_pretrained(pretrained, values)
            new_tokens = getattr(tokenizer, "new_token_sources", None)  # tokens added to the folder's tokenizer
            if new_tokens:
                model.add_token_embeddings({i: rows for i, rows in new_tokens.items() if i >= model.config.vocab_size})
            return fit_tokenizer(model, tokenizer, pretrained)
        if tokenizer is not None:
            values.update(
                vocab_size=scratch_vocab_size(tokenizer, values, self.config_class, f"{self.builder_name} config"),
                pad_token_id=tokenizer.pad_id,
                eos_token_id=tokenizer.eos_id,
                decoder_start_token_id=tokenizer.prefix_ids[0],
                **self.scratch_token_fields(tokenizer),
            )
        return self.model_class(self.config_class(**values))
