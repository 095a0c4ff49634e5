"""What every family's feature extractor shares: the `FeatureExtractor` protocol that collators and tasks rely on,
and saving and loading as a Hugging Face `preprocessor_config.json` (transformers' `feature_extraction_utils`).
The extractors themselves live in their families' folders (`models/whisper/features.py`,
`models/speech2text/features.py`)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from speechtrain.errors import CheckpointError

CONFIG_NAME = "preprocessor_config.json"


@runtime_checkable
class FeatureExtractor(Protocol):
    """What collators and tasks need from a feature extractor.

    `__call__` turns 1-D waveforms at `sampling_rate` into `(features [B, n_features, frames],
    frame_mask [B, frames] bool)`, True on frames that hold audio. `save_pretrained(dir)` writes the
    HF `preprocessor_config.json` and the class's `from_pretrained(dir)` reads it back.
    `min_samples` is the shortest waveform it accepts; an extractor that pads every waveform to a
    fixed window has that window's length in seconds as `chunk_length` (data modules cost items by it).
    """

    sampling_rate: int
    min_samples: int

    def __call__(self, waveforms: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def save_pretrained(self, directory: str | Path) -> None: ...


class PretrainedFeatureExtractor:
    """`save_pretrained`/`from_pretrained` through `preprocessor_config.json`: a subclass is named after
    transformers' class (its `feature_extractor_type`), writes the file with `to_dict` and is rebuilt from the
    file's values that are its constructor's arguments."""

    # `preprocessor_config.json`: the attributes it stores (the constructor's arguments and what transformers
    # derives from them) and whether transformers' class returns an attention mask by default
    saved_attributes: tuple[str, ...] = ()
    returns_attention_mask: bool = True

    def to_dict(self) -> dict:
        """The HF `preprocessor_config.json` fields, so transformers loads what we save."""
        return {"feature_extractor_type": type(self).__name__, "padding_side": "right",
                "return_attention_mask": self.returns_attention_mask,
                **{name: getattr(self, name) for name in self.saved_attributes}}

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PretrainedFeatureExtractor:
        """The extractor of a folder's `preprocessor_config.json`, which must be of this class (or say none)."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; expected a Hugging Face-format model folder")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: invalid JSON ({err})") from err
        kind = config.get("feature_extractor_type", cls.__name__)
        if kind != cls.__name__:
            raise CheckpointError(f"{path}: feature_extractor_type is {kind!r}, expected {cls.__name__!r}")
        names = inspect.signature(cls).parameters
        return cls(**{name: value for name, value in config.items() if name in names})
