"""Hugging Face-format Speech2Text folders (`config.json` + `model.safetensors`) in and out, and the builder that
Hydra configs point at."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from speechtrain.models.speech2text.config import Speech2TextConfig
from speechtrain.models.speech2text.modeling import (
    Speech2TextForConditionalGeneration,
    Speech2TextSinusoidalPositionalEmbedding,
)
from speechtrain.models.whisper.hub import CONFIG_NAME, SAFETENSORS_NAME, _read_state_dict

TIED_KEY = "lm_head.weight"


class AsrTokenizer(Protocol):
    prefix_ids: list[int]
    eos_id: int
    pad_id: int

    def __len__(self) -> int: ...


def _check_config_keys(values: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(Speech2TextConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown Speech2TextConfig keys {unknown}; valid keys are {sorted(known)}")


def model_from_hf_config(
    hf_config: Mapping[str, Any], attn_implementation: str = "sdpa"
) -> Speech2TextForConditionalGeneration:
    """A randomly initialised model of the architecture in a transformers `config.json` dict."""
    return Speech2TextForConditionalGeneration(Speech2TextConfig.from_hf_dict(dict(hf_config)), attn_implementation)


def load_pretrained(
    path: str | Path,
    attn_implementation: str = "sdpa",
    config_overrides: Mapping[str, Any] | None = None,
) -> Speech2TextForConditionalGeneration:
    """Loads a transformers-format Speech2Text folder as a float32 model.

    `config_overrides` replace `config.json` values before building (e.g. dropout for fine-tuning). Every
    weight must match by name and shape; only the tied `lm_head.weight` may be absent.
    """
    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; expected a Hugging Face-format Speech2Text folder")
    hf_config = json.loads(config_path.read_text())
    if config_overrides:
        _check_config_keys(config_overrides, f"overrides for {config_path}")
        hf_config.update(config_overrides)
    try:
        config = Speech2TextConfig.from_hf_dict(hf_config)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from error

    state = _read_state_dict(folder)
    with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
        model = Speech2TextForConditionalGeneration(config, attn_implementation)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    optional = {TIED_KEY} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key])}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key]
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{folder}: weights do not fit Speech2TextForConditionalGeneration built from {CONFIG_NAME}: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {wrong_shape}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    for module in model.modules():  # the position tables are buffers outside the state dict: rebuild them
        if isinstance(module, Speech2TextSinusoidalPositionalEmbedding):
            module.reset_parameters()
    return model.float()


def save_pretrained(model: Speech2TextForConditionalGeneration, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` (without the tied `lm_head.weight`, as transformers)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    state = {
        key: value.detach().cpu().contiguous()
        for key, value in model.state_dict().items()
        if not (key == TIED_KEY and model.config.tie_word_embeddings)
    }
    save_file(state, folder / SAFETENSORS_NAME, metadata={"format": "pt"})


def build_speech2text(
    tokenizer: AsrTokenizer,
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    attn_implementation: str = "sdpa",
) -> Speech2TextForConditionalGeneration:
    """Builds Speech2Text from scratch (`config` over the defaults) or from a `pretrained` folder (`config` then
    overrides its config.json, e.g. dropout).

    From scratch, the vocabulary size and the special token ids come from the tokenizer (`vocab_size` may be
    set larger; `bos_id` is optional). From a folder, the tokenizer must fit inside the checkpoint's vocabulary.
    """
    values = dict(config or {})
    if pretrained is not None:
        model = load_pretrained(pretrained, attn_implementation, config_overrides=values)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but {pretrained} has vocab_size="
                f"{model.config.vocab_size}; use the checkpoint's own tokenizer"
            )
        return model
    _check_config_keys(values, "speech2text model config")
    vocab_size = values.get("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"speech2text model config: vocab_size={vocab_size} is smaller than the tokenizer "
                         f"({len(tokenizer)} tokens)")
    values.update(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=getattr(tokenizer, "bos_id", tokenizer.eos_id),  # unused by the model; kept for config.json
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.prefix_ids[0],
    )
    return Speech2TextForConditionalGeneration(Speech2TextConfig(**values), attn_implementation)
