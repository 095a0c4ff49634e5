"""Hugging Face-format Whisper folders (`config.json` + `model.safetensors`) in and out, and the builder that
Hydra configs point at; the reading and writing is the tied encoder-decoder format shared with Speech2Text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtrain.hub import AsrTokenizer, TiedEncoderDecoderFormat
from speechtrain.models.whisper.config import WhisperConfig
from speechtrain.models.whisper.modeling import WhisperForConditionalGeneration


def _scratch_token_fields(tokenizer: AsrTokenizer) -> dict[str, Any]:
    """Whisper starts and ends a text with <|endoftext|> and suppresses the tokenizer's suppressed tokens."""
    return {
        "bos_token_id": tokenizer.eos_id,
        "suppress_tokens": list(getattr(tokenizer, "suppress_tokens", []) or []),
        "begin_suppress_tokens": list(getattr(tokenizer, "begin_suppress_tokens", []) or []),
    }


FORMAT = TiedEncoderDecoderFormat(WhisperForConditionalGeneration, WhisperConfig, tied_key="proj_out.weight",
                                  builder_name="build_whisper", scratch_token_fields=_scratch_token_fields)
model_from_hf_config = FORMAT.model_from_hf_config
load_pretrained = FORMAT.load_pretrained
save_pretrained = FORMAT.save_pretrained


def build_whisper(
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    tokenizer: AsrTokenizer | None = None,
) -> WhisperForConditionalGeneration:
    """The builder Hydra configs point at (see `TiedEncoderDecoderFormat.build`)."""
    return FORMAT.build(config, pretrained, overrides, tokenizer)
