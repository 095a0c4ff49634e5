"""What a Lightning checkpoint carries besides weights, so that export needs no Hydra config, and the LoRA adapters
every task can train (`task.lora`).

With `lora={rank, alpha, targets, dropout}` the model's matching linear layers (by module name, see
`speechtrain.layers.lora`) get adapters and everything else in the model is frozen. Checkpoints then hold the
merged, plain weights under transformers' names in `state_dict` (so `speechtrain-export` and any loader see an
ordinary model) and, under `lora`, the frozen base weights of the adapted layers and the adapters, from which
resuming restores the exact training state. At the end of `fit` the adapters are kept in peft's format
(`peft_adapter`, written by the entry point beside the export) and merged into the model in place, so the entry
point exports a plain model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from speechtrain.errors import ConfigError
from speechtrain.hub import save_support_files
from speechtrain.layers.lora import LoRALinear, apply_lora, merge_lora, peft_adapter

PRETRAINED_FILES_KEY = "pretrained_files"
LORA_KEYS = {"rank", "alpha", "targets", "dropout"}
LORA_CHECKPOINT_KEY = "lora"


def attach_pretrained_files(
    checkpoint: dict[str, Any], model: nn.Module, tokenizer: Any, feature_extractor: Any
) -> None:
    """Store config.json, tokenizer and preprocessor files (name -> bytes) inside the checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        save_support_files(folder, model, tokenizer, feature_extractor)
        checkpoint[PRETRAINED_FILES_KEY] = {
            path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()
        }


def model_state_dict(checkpoint: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    """The network's weights from a task checkpoint, without the task's attribute prefix."""
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


class ExportableTask:
    """The checkpoint and export hooks every task shares (mixed in before `LightningModule`): the pretrained files in
    each checkpoint, and optional LoRA adapters on `self.model`. A task sets `self.model` (and its `tokenizer` and
    `feature_extractor` where it has them), then calls `add_lora(lora)`."""

    tokenizer: Any = None
    feature_extractor: Any = None
    peft_adapter: tuple[dict[str, Any], dict[str, Any]] | None = None  # set at the end of a LoRA fit

    def add_lora(self, lora: Mapping[str, Any] | None) -> None:
        if not lora:
            return
        unknown = set(lora) - LORA_KEYS
        if unknown or "targets" not in lora:
            raise ConfigError(f"task.lora={dict(lora)}: expected keys {sorted(LORA_KEYS)} (targets required), "
                              f"unknown: {sorted(unknown)}")
        apply_lora(self.model, list(lora["targets"]), lora.get("rank", 8), lora.get("alpha", 16.0),
                   lora.get("dropout", 0.0))

    def _adapted(self) -> dict[str, LoRALinear]:
        """State-dict prefixes (`model.layers.0.attn.att_proj.`) of the LoRA layers."""
        return {f"model.{name}.": module for name, module in self.model.named_modules()
                if isinstance(module, LoRALinear)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        attach_pretrained_files(checkpoint, self.model, self.tokenizer, self.feature_extractor)
        adapted = self._adapted()
        if not adapted:
            return
        state, kept = checkpoint["state_dict"], {}
        for prefix, module in adapted.items():
            for key in ("weight", "lora_a", "lora_b"):
                kept[prefix + key] = state.pop(prefix + key)
            state[prefix + "weight"] = module.merged().weight.detach()
        checkpoint[LORA_CHECKPOINT_KEY] = kept

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Puts the base weights and adapters back (a LoRA run resumed) before Lightning loads the state dict."""
        kept = checkpoint.get(LORA_CHECKPOINT_KEY)
        if kept and not self._adapted():
            raise ConfigError("this checkpoint was trained with LoRA adapters: resume it with the same task.lora, "
                              "or export it (speechtrain-export) and fine-tune the exported folder")
        if kept:  # a folder of FSDP shards has no state_dict here: the strategy loads the shards into the model
            checkpoint["state_dict"].update(kept)

    def on_fit_end(self) -> None:
        if self._adapted():
            self.peft_adapter = peft_adapter(self.model)
        merge_lora(self.model)  # the entry point exports task.model: a plain model
