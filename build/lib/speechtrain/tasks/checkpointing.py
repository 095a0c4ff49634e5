"""What a Lightning checkpoint carries besides weights, so that export needs no Hydra config."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from speechtrain.hub import save_support_files

PRETRAINED_FILES_KEY = "pretrained_files"


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
