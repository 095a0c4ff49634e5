"""Hugging Face-format folders (`config.json` + `model.safetensors`) in and out, and the builder that Hydra
configs point at."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtrain.hub import (
    AsrTokenizer,
    build_values,
    fit_tokenizer,
    load_tied_model,
    save_tied_model,
    scratch_vocab_size,
)
from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.modeling import WhisperForConditionalGeneration

TIED_KEY = "proj_out.weight"


def model_from_hf_config(hf_config: Mapping[str, Any]) -> WhisperForConditionalGeneration:
    """A randomly initialised model of the architecture in a transformers `config.json` dict."""
    return WhisperForConditionalGeneration(WhisperConfig.from_hf_dict(dict(hf_config)))


def load_pretrained(
    path: str | Path, overrides: Mapping[str, Any] | None = None
) -> WhisperForConditionalGeneration:
    """Loads a transformers-format Whisper folder as a float32 model.

    `overrides` replace `config.json` values before building (e.g. dropout for fine-tuning, `attn_implementation`).
    Every weight must match by name and shape; only the tied `proj_out.weight` may be absent.
    """
    model = load_tied_model(path, WhisperForConditionalGeneration, WhisperConfig, TIED_KEY, overrides)
    model.model.encoder.embed_positions.requires_grad_(False)
    return model.float()


def save_pretrained(model: WhisperForConditionalGeneration, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` (without the tied `proj_out.weight`, as transformers)."""
    save_tied_model(model, path, TIED_KEY)


def build_whisper(
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    tokenizer: AsrTokenizer | None = None,
) -> WhisperForConditionalGeneration:
    """The builder Hydra configs point at: from scratch (`config` over the defaults) or from a `pretrained` folder;
    `overrides` replace values of either (e.g. dropout, `attn_implementation`).

    From scratch, the vocabulary size and the special token ids come from the `tokenizer` when one is given
    (`vocab_size` may be set larger). From a folder, the tokenizer must fit inside the checkpoint's vocabulary.
    """
    values = build_values(config, pretrained, overrides, "build_whisper")
    if pretrained is not None:
        return fit_tokenizer(load_pretrained(pretrained, values), tokenizer, pretrained)
    if tokenizer is not None:
        values.update(
            vocab_size=scratch_vocab_size(tokenizer, values, WhisperConfig, "whisper model config"),
            pad_token_id=tokenizer.pad_id,
            bos_token_id=tokenizer.eos_id,
            eos_token_id=tokenizer.eos_id,
            decoder_start_token_id=tokenizer.prefix_ids[0],
            suppress_tokens=list(getattr(tokenizer, "suppress_tokens", []) or []),
            begin_suppress_tokens=list(getattr(tokenizer, "begin_suppress_tokens", []) or []),
        )
    return WhisperForConditionalGeneration(WhisperConfig(**values))
