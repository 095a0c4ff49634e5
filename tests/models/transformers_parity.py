"""Scaffolding the encoder-decoder parity tests against transformers share (the references stay in each test)."""

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def ours_from_transformers(model_from_hf_config: Callable[[Mapping[str, Any]], nn.Module], hf: nn.Module,
                           attn_implementation: str = "sdpa") -> nn.Module:
    """Our model of a transformers model: built by a family's `model_from_hf_config` from `hf`'s config with
    `attn_implementation`, holding `hf`'s weights (strictly: every key by name and shape), in eval mode."""
    model = model_from_hf_config({**hf.config.to_dict(), "attn_implementation": attn_implementation})
    model.load_state_dict(hf.state_dict(), strict=True)
    return model.eval()
