"""SoundStorm model folders (`config.json` + `model.safetensors`) in and out, the Hydra builder, and
lucidrains/soundstorm-pytorch weights renamed to ours.

The seed's `SoundStorm` state dict maps one to one: its `ConformerWrapper` lives under `net.`, its pre-norm,
scale, residual (`branch.`, from 0.6 on) and `nn.Sequential` wrappers add name levels, and its per-level logit
`EinMix` holds `weight` [Q, D, K] and `bias` ([Q, K], or [1, 1, Q, K] from 0.6 on), our `logits_weight` and
`logits_bias`. What the seed added later has no counterpart here and is left under its own name, so that
`check_state_dict` lists it: hyper-connection streams (`num_residual_streams > 1`), value-residual mixing
(`to_value_residual_mix`, on in 0.6 in every layer after the first), gateloop layers, T5 relative bias and
the token critic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from speechtrain.hub import build_values, check_state_dict, load_config, read_state_dict, write_model_folder
from speechtrain.models.soundstorm.config import SoundStormConfig
from speechtrain.models.soundstorm.modeling import SoundStorm

# soundstorm-pytorch key (after `net.` is dropped) -> ours
SEED_RENAMES = [
    # the Conformer's two feed-forward halves
    (r"^conformer\.layers\.(\d+)\.ff([12])\.fn\.norm\.", r"conformer.layers.\1.ff\2.norm."),
    (r"^conformer\.layers\.(\d+)\.ff([12])\.fn\.fn\.net\.0\.", r"conformer.layers.\1.ff\2.fc1."),  # net[0]: a Linear
    (r"^conformer\.layers\.(\d+)\.ff([12])\.fn\.fn\.net\.3\.", r"conformer.layers.\1.ff\2.fc2."),
    # self-attention
    (r"^conformer\.layers\.(\d+)\.attn\.norm\.", r"conformer.layers.\1.attn.norm."),
    (r"^conformer\.layers\.(\d+)\.attn\.fn\.", r"conformer.layers.\1.attn."),
    # convolution module
    (r"^conformer\.layers\.(\d+)\.conv\.net1\.0\.", r"conformer.layers.\1.conv.norm."),  # net1[0]: LayerNorm
    (r"^conformer\.layers\.(\d+)\.conv\.net1\.2\.", r"conformer.layers.\1.conv.pointwise_in."),
    (r"^conformer\.layers\.(\d+)\.conv\.ds_conv\.conv\.", r"conformer.layers.\1.conv.depthwise."),  # DepthWiseConv1d
    (r"^conformer\.layers\.(\d+)\.conv\.net2\.1\.gamma$", r"conformer.layers.\1.conv.channel_norm.gamma"),
    (r"^conformer\.layers\.(\d+)\.conv\.net2\.2\.", r"conformer.layers.\1.conv.pointwise_out."),
    # per-level heads and the logits
    (r"^heads\.0\.", "heads."),  # heads[0]: one Linear onto every level
    (r"^to_logits\.0\.", "logits_norm."),
    (r"^to_logits\.2\.weight$", "logits_weight"),
    (r"^to_logits\.2\.bias$", "logits_bias"),
]


def load_soundstorm_pytorch_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A soundstorm-pytorch `SoundStorm` (or bare `ConformerWrapper`) state dict renamed to ours; keys are not
    checked here (`check_state_dict` does that against a model)."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("net.").replace(".branch.", ".")
        for pattern, replacement in SEED_RENAMES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        renamed[key] = value.reshape(value.shape[-2:]) if key == "logits_bias" else value
    return renamed


def model_from_hf_config(hf_config: Mapping[str, Any]) -> SoundStorm:
    """A randomly initialised model of the architecture in a `config.json` dict."""
    return SoundStorm(SoundStormConfig.from_hf_dict(dict(hf_config)))


def load_pretrained(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SoundStorm:
    """A float32 model from a folder; `overrides` (SoundStormConfig fields, e.g. dropouts or
    `attn_implementation`) replace `config.json` values."""
    model = SoundStorm(load_config(path, SoundStormConfig, overrides))
    state = {key: value.float() for key, value in read_state_dict(path).items()}
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model


def save_pretrained(model: SoundStorm, path: str | Path) -> None:
    """Writes `config.json` and `model.safetensors`."""
    write_model_folder(path, model.config.to_hf_dict(), model.state_dict())


def build_soundstorm(
    config: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SoundStorm:
    """The builder Hydra configs point at: from scratch (`config` over the paper's defaults) or from a folder
    (`pretrained`); `overrides` replace values of either (e.g. dropouts, `attn_implementation`). SoundStorm reads
    token ids only, so no tokenizer is involved."""
    values = build_values(config, pretrained, overrides, "build_soundstorm")
    if pretrained is not None:
        return load_pretrained(pretrained, values)
    return SoundStorm(SoundStormConfig(**values))
