"""Hugging Face-format folders (`config.json` + `model.safetensors`) in and out, and the builder that Hydra
configs point at."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtrain.hub import AsrTokenizer, check_tokenizer_fits, load_tied_model, save_tied_model, scratch_vocab_size
from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.modeling import WhisperForConditionalGeneration

TIED_KEY = "proj_out.weight"


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
    model = load_tied_model(path, WhisperForConditionalGeneration, WhisperConfig, TIED_KEY, config_overrides,
                            attn_implementation=attn_implementation)
    model.model.encoder.embed_positions.requires_grad_(False)
    return model.float()


def save_pretrained(model: WhisperForConditionalGeneration, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors` (without the tied `proj_out.weight`, as transformers)."""
    save_tied_model(model, path, TIED_KEY)


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
        check_tokenizer_fits(len(tokenizer), model.config.vocab_size, str(pretrained))
        return model
    vocab_size = scratch_vocab_size(tokenizer, values, WhisperConfig, "whisper model config")
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
