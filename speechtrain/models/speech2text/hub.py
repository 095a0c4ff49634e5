"""Hugging Face-format Speech2Text folders (`config.json` + `model.safetensors`) in and out, and the builder that
Hydra configs point at; the reading and writing is the tied encoder-decoder format shared with Whisper."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtrain.hub import AsrTokenizer, TiedEncoderDecoderFormat
from speechtrain.models.speech2text.config import Speech2TextConfig
from speechtrain.models.speech2text.modeling import Speech2TextForConditionalGeneration


def _scratch_token_fields(tokenizer: AsrTokenizer) -> dict[str, Any]:
    """`bos_token_id` is unused by the model (kept for config.json); a tokenizer without one gives the end id."""
    return {"bos_token_id": getattr(tokenizer, "bos_id", tokenizer.eos_id)}


FORMAT = TiedEncoderDecoderFormat(Speech2TextForConditionalGeneration, Speech2TextConfig, tied_key="lm_head.weight",
                                  builder_name="build_speech2text", scratch_token_fields=_scratch_token_fields)
model_from_hf_config = FORMAT.model_from_hf_config
load_pretrained = FORMAT.load_pretrained
save_pretrained = FORMAT.save_pretrained


def build_speech2text(
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    tokenizer: AsrTokenizer | None = None,
) -> Speech2TextForConditionalGeneration:
    """The builder Hydra configs point at (see `TiedEncoderDecoderFormat.build`)."""
    return FORMAT.build(config, pretrained, overrides, tokenizer)
