"""Hugging Face-format folders (`config.json` + `model.safetensors`) in and out, and the builder that Hydra
configs point at."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.modeling import WhisperForConditionalGeneration

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
TIED_KEY = "proj_out.weight"


class AsrTokenizer(Protocol):
    prefix_ids: list[int]
    eos_id: int
    pad_id: int

    def __len__(self) -> int: ...


def _check_config_keys(values: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(WhisperConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown WhisperConfig keys {unknown}; valid keys are {sorted(known)}")


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / SAFETENSORS_NAME).is_file():
        return load_file(folder / SAFETENSORS_NAME)
    if (folder / SAFETENSORS_INDEX_NAME).is_file():
        shards = sorted(set(json.loads((folder / SAFETENSORS_INDEX_NAME).read_text())["weight_map"].values()))
        return {key: value for shard in shards for key, value in load_file(folder / shard).items()}
    if (folder / PYTORCH_NAME).is_file():
        return torch.load(folder / PYTORCH_NAME, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{folder}: no weights found; expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {PYTORCH_NAME}"
    )


def model_from_hf_config(
    hf_config: Mapping[str, Any], attn_implementation: str = "sdpa"
) -> WhisperForConditionalGeneration:
    """A randomly initialised model of the architecture in a transformers `config.json` dict."""
    return WhisperForConditionalGeneration(WhisperConfig.from_hf_dict(dict(hf_config)), attn_implementation)


def load_pretrained(
    path: str | Path,
    attn_implementation: str = "sdpa",
    config_overrides: Mapping[str, Any] | None = None,
) -> WhisperForConditionalGeneration:
    """Loads a transformers-format Whisper folder as a float32 model.

    `config_overrides` replace `config.json` values before building (e.g. dropout for fine-tuning). Every
    weight must match by name and shape; only the tied `proj_out.weight` may be absent.
    """
    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; expected a Hugging Face-format Whisper folder")
    hf_config = json.loads(config_path.read_text())
    if config_overrides:
        _check_config_keys(config_overrides, f"overrides for {config_path}")
        hf_config.update(config_overrides)
    try:
        config = WhisperConfig.from_hf_dict(hf_config)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from error

    state = _read_state_dict(folder)
    with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
        model = WhisperForConditionalGeneration(config, attn_implementation)
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
            f"{folder}: weights do not fit WhisperForConditionalGeneration built from {CONFIG_NAME}: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {wrong_shape}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.model.encoder.embed_positions.requires_grad_(False)
    return model.float()


def save_pretrained(model: WhisperForConditionalGeneration, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` (without the tied `proj_out.weight`, as transformers)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    state = {
        key: value.detach().cpu().contiguous()
        for key, value in model.state_dict().items()
        if not (key == TIED_KEY and model.config.tie_word_embeddings)
    }
    save_file(state, folder / SAFETENSORS_NAME, metadata={"format": "pt"})


def build_whisper(
    tokenizer: AsrTokenizer,
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    attn_implementation: str = "sdpa",
) -> WhisperForConditionalGeneration:
    """Builds Whisper from scratch (`config` over the defaults) or from a `pretrained` folder (`config` then
    overrides its config.json, e.g. dropout).

    From scratch, the vocabulary size and the special token ids come from the tokenizer (`vocab_size` may be
    set larger). From a folder, the tokenizer must fit inside the checkpoint's vocabulary.
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
    _check_config_keys(values, "whisper model config")
    vocab_size = values.get("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"whisper model config: vocab_size={vocab_size} is smaller than the tokenizer "
                         f"({len(tokenizer)} tokens)")
    values.update(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.prefix_ids[0],
        suppress_tokens=list(getattr(tokenizer, "suppress_tokens", []) or []),
        begin_suppress_tokens=list(getattr(tokenizer, "begin_suppress_tokens", []) or []),
    )
    return WhisperForConditionalGeneration(WhisperConfig(**values), attn_implementation)
