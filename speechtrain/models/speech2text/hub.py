"""Hugging Face-format Speech2Text folders (`config.json` + `model.safetensors`) in and out, and the builder that
Hydra configs point at."""

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
from speechtrain.models.speech2text.config import Speech2TextConfig
from speechtrain.models.speech2text.modeling import (
    Speech2TextForConditionalGeneration,
    Speech2TextSinusoidalPositionalEmbedding,
)

TIED_KEY = "lm_head.weight"


def model_from_hf_config(hf_config: Mapping[str, Any]) -> Speech2TextForConditionalGeneration:
    """A randomly initialised model of the architecture in a transformers `config.json` dict."""
    return Speech2TextForConditionalGeneration(Speech2TextConfig.from_hf_dict(dict(hf_config)))


def load_pretrained(
    path: str | Path, overrides: Mapping[str, Any] | None = None
) -> Speech2TextForConditionalGeneration:
    """Loads a transformers-format Speech2Text folder as a float32 model.

    `overrides` replace `config.json` values before building (e.g. dropout for fine-tuning, `attn_implementation`).
    Every weight must match by name and shape; only the tied `lm_head.weight` may be absent.
    """
    model = load_tied_model(path, Speech2TextForConditionalGeneration, Speech2TextConfig, TIED_KEY, overrides)
    for module in model.modules():  # the position tables are buffers outside the state dict: rebuild them
        if isinstance(module, Speech2TextSinusoidalPositionalEmbedding):
            module.reset_parameters()
    return model.float()


def save_pretrained(model: Speech2TextForConditionalGeneration, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` (without the tied `lm_head.weight`, as transformers)."""
    save_tied_model(model, path, TIED_KEY)


def build_speech2text(
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    tokenizer: AsrTokenizer | None = None,
) -> Speech2TextForConditionalGeneration:
    """The builder Hydra configs point at: from scratch (`config` over the defaults) or from a `pretrained` folder;
    `overrides` replace values of either (e.g. dropout, `attn_implementation`).

    From scratch, the vocabulary size and the special token ids come from the `tokenizer` when one is given
    (`vocab_size` may be set larger; `bos_id` is optional). From a folder, the tokenizer must fit inside the
    checkpoint's vocabulary.
    """
    values = build_values(config, pretrained, overrides, "build_speech2text")
    if pretrained is not None:
        return fit_tokenizer(load_pretrained(pretrained, values), tokenizer, pretrained)
    if tokenizer is not None:
        values.update(
            vocab_size=scratch_vocab_size(tokenizer, values, Speech2TextConfig, "speech2text model config"),
            pad_token_id=tokenizer.pad_id,
            bos_token_id=getattr(tokenizer, "bos_id", tokenizer.eos_id),  # unused by the model; kept for config.json
            eos_token_id=tokenizer.eos_id,
            decoder_start_token_id=tokenizer.prefix_ids[0],
        )
    return Speech2TextForConditionalGeneration(Speech2TextConfig(**values))
