"""Low-rank adapters (LoRA, Hu et al. 2021) for any model built of `nn.Linear`s.

Why our own and not peft: peft would be a runtime dependency for some thirty lines, and it is built around
transformers' `PreTrainedModel`s (configs, `save_pretrained`, adapter folders), which our plain-torch models are
not. Here `LoRALinear` keeps the wrapped layer's `weight` and `bias` under their own names, so a model with
adapters still loads and saves transformers-named state dicts, and `merge_lora` gives back plain `nn.Linear`s
whose weights are `W + (alpha / rank) * B @ A`: the export is an ordinary model. `peft_adapter` writes the adapters
alone in peft's format as well, for those who keep one base model and many adapters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """`base(x) + (alpha / rank) * B(A(dropout(x)))` with `base`'s `weight` and `bias` frozen.

    `lora_a` `[rank, in]` starts Kaiming-uniform and `lora_b` `[out, rank]` at zero (as the paper and peft), so an
    adapted model starts out computing exactly what the base model does.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.weight = base.weight  # the same Parameter objects: names and values of the wrapped layer
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def delta_weight(self) -> torch.Tensor:
        """The adapter as a weight update `[out, in]`."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)  # [..., rank] -> [..., out]
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` computing what this layer computes (without dropout)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _matches(name: str, targets: Sequence[str]) -> bool:
    """`targets` are module names or dotted suffixes of them (`out_proj` matches `layers.0.attn.out_proj`)."""
    return any(name == target or name.endswith("." + target) for target in targets)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, target_names: Sequence[str], rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> nn.Module:
    """Wraps every `nn.Linear` whose name matches `target_names` in a `LoRALinear` (in place) and freezes every
    other parameter, so that only the adapters train. Returns `model`."""
    if isinstance(target_names, str):
        target_names = [target_names]
    targets = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
               and _matches(name, target_names)]
    if not targets:
        linears = sorted({name.rpartition(".")[2] for name, module in model.named_modules()
                          if isinstance(module, nn.Linear)})
        raise ValueError(f"LoRA targets {list(target_names)} match no nn.Linear of {type(model).__name__}; "
                         f"its linear layers are named {linears}")
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    for name in targets:
        shared = owners[id(model.get_submodule(name).weight)]
        if len(shared) > 1:
            others = [other for other in shared if other != name + ".weight"]
            raise ValueError(f"LoRA target {name!r} shares its weight with {others} (tied weights): merging would "
                             "change both; leave it out of the targets")
    model.requires_grad_(False)
    for name in targets:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Folds every `LoRALinear` of `model` into a plain `nn.Linear` (in place), keeping the parameter names, so the
    state dict is the base model's. Returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())
    return model


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names of the adapter parameters (`...lora_a`, `...lora_b`)."""
    return [name for name, _ in model.named_parameters() if name.endswith((".lora_a", ".lora_b"))]


PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


def peft_adapter(model: nn.Module, base_model_name_or_path: str | None = None
                 ) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """(adapter_config.json values, adapter_model.safetensors tensors) of `model`'s LoRA layers in peft's format, so
    that `peft.PeftModel.from_pretrained(transformers_model, folder)` adds them to the transformers model whose
    names ours follow: `base_model.model.<module>.lora_A.weight` `[rank, in]` and `lora_B.weight` `[out, rank]`."""
    adapted = {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}
    if not adapted:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to export")
    settings = {(m.rank, m.alpha, m.dropout.p) for m in adapted.values()}
    if len(settings) > 1:
        raise ValueError(f"peft's LoRA config holds one rank, alpha and dropout; the layers have {sorted(settings)}")
    (rank, alpha, dropout), = settings
    tensors = {}
    for name, module in adapted.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = module.lora_a.detach().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = module.lora_b.detach().contiguous()
    config = {
        "peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
        "target_modules": sorted(adapted), "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "base_model_name_or_path": base_model_name_or_path,
    }
    return config, tensors


def save_peft_adapter(folder: str | Path, config: Mapping[str, object], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Writes `peft_adapter`'s output as peft's adapter folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PEFT_CONFIG_NAME).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    save_file(dict(tensors), folder / PEFT_WEIGHTS_NAME, metadata={"format": "pt"})
    return folder
