"""Hugging Face-format Speech2Text folders (`config.json` + `model.safetensors`) in and out, and the builder that
Hydra configs point at."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtrain.hub import AsrTokenizer, check_tokenizer_fits, load_tied_model, save_tied_model, scratch_vocab_size
from speechtrain.models.speech2text.config import Speech2TextConfig
from speechtrain.models.speech2text.modeling import (
    Speech2TextForConditionalGeneration,
    Speech2TextSinusoidalPositionalEmbedding,
)

TIED_KEY = "lm_head.weight"


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
    model = load_tied_model(path, Speech2TextForConditionalGeneration, Speech2TextConfig, TIED_KEY, config_overrides,
                            attn_implementation=attn_implementation)
    for module in model.modules():  # the position tables are buffers outside the state dict: rebuild them
        if isinstance(module, Speech2TextSinusoidalPositionalEmbedding):
            module.reset_parameters()
    return model.float()


def save_pretrained(model: Speech2TextForConditionalGeneration, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` (without the tied `lm_head.weight`, as transformers)."""
    save_tied_model(model, path, TIED_KEY)


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
        check_tokenizer_fits(len(tokenizer), model.config.vocab_size, str(pretrained))
        return model
    vocab_size = scratch_vocab_size(tokenizer, values, Speech2TextConfig, "speech2text model config")
    values.update(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=getattr(tokenizer, "bos_id", tokenizer.eos_id),  # unused by the model; kept for config.json
        eos_token_id=tokenizer.eos_id,
        decoder_start_token_id=tokenizer.prefix_ids[0],
    )
    return Speech2TextForConditionalGeneration(Speech2TextConfig(**values), attn_implementation)
