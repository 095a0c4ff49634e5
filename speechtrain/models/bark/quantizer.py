"""Bark's semantic ids from HuBERT features: the community quantizer that voice cloning and Bark fine-tuning use.

Bark's semantic tokenizer was never released. gitmylo's bark-voice-cloning-HuBERT-quantizer trained a small network
to reproduce it: layer-9 features of HuBERT base (ls960) go through a two-layer LSTM, an optional wider linear layer
(its "version 1") and a linear head onto Bark's 10,000 semantic ids, argmax per frame. serp-ai/bark-with-voice-clone
and the audio web UIs tokenize with it (checkpoints such as `quantifier_hubert_base_ls960_14.pth`, version 0, and
`quantifier_V1_hubert_base_ls960_23.pth`, version 1).

The checkpoint format is that project's: a `torch.save`d state dict (`lstm.*`, `intermediate.*` in version 1, `fc.*`)
whose zip archive may hold a `<name>/.info` JSON entry with `input_size`, `hidden_size`, `output_size` and `version`;
without it (the first checkpoints) the sizes are 768, 1024, 10,000 and version 0. The state dict is read without
unpickling code (`safe_load.load_untrusted`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from speechtrain.errors import CheckpointError
from speechtrain.safe_load import load_untrusted

HUBERT_LAYER = 9  # the layer the quantizers were trained on (the community HuBERT wrapper's output_layer)
INTERMEDIATE_SIZE = 4096  # version 1's linear layer between the LSTM and the head


@dataclass(frozen=True)
class QuantizerShape:
    """The sizes a checkpoint's `.info` entry records (its defaults are the first checkpoints')."""

    input_size: int = 768
    hidden_size: int = 1024
    output_size: int = 10_000
    version: int = 0


class BarkSemanticQuantizer(nn.Module):
    """HuBERT features `[frames, input_size]` -> Bark semantic ids `[frames]`, with the community checkpoint's
    parameter names, so its state dict loads as it is."""

    bark_compatible = True  # the ids are meant to be Bark's own (tokens.json records it)
    hubert_layer = HUBERT_LAYER

    def __init__(self, shape: QuantizerShape = QuantizerShape()):
        super().__init__()
        if shape.version not in (0, 1):
            raise CheckpointError(f"Bark quantizer version {shape.version} is unknown; versions 0 and 1 exist")
        self.shape = shape
        self.lstm = nn.LSTM(shape.input_size, shape.hidden_size, num_layers=2, batch_first=True)
        self.intermediate = nn.Linear(shape.hidden_size, INTERMEDIATE_SIZE) if shape.version == 1 else None
        self.fc = nn.Linear(INTERMEDIATE_SIZE if shape.version == 1 else shape.hidden_size, shape.output_size)
        self.source: str | None = None  # the checkpoint's file name, once loaded
        self.sha256: str | None = None

    @property
    def num_clusters(self) -> int:
        """How many ids it emits (the name `HubertSemanticTokenizer` reads for any id head)."""
        return self.shape.output_size

    @property
    def input_size(self) -> int:
        return self.shape.input_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-probabilities `[frames, output_size]` of the features `[frames, input_size]` of one utterance (the
        LSTM reads the utterance as one unbatched sequence, as the community code does)."""
        hidden, _ = self.lstm(features)  # [frames, hidden_size]
        if self.intermediate is not None:
            hidden = self.intermediate(hidden)  # [frames, 4096]
        return self.fc(hidden).log_softmax(dim=-1)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The most likely id of every frame: LongTensor `[frames]`, on the features' device."""
        if features.dim() != 2 or features.shape[1] != self.input_size:
            raise ValueError(f"the Bark quantizer reads features [frames, {self.input_size}], got shape "
                             f"{tuple(features.shape)}; use the HuBERT it was trained on (HuBERT base: 768)")
        weight = self.fc.weight
        if len(features) == 0:
            return features.new_zeros(0, dtype=torch.long)
        return self(features.to(weight.device, weight.dtype)).argmax(dim=-1).to(features.device)

    def settings(self) -> dict:
        """What identifies its ids in tokens.json."""
        return {"name": "bark-quantizer", "checkpoint": self.source, "sha256": self.sha256, **asdict(self.shape)}

    def save(self, path: str | Path) -> None:
        """Writes the community checkpoint format (a state dict, then the `.info` entry appended to its zip)."""
        path = Path(path)
        torch.save(self.state_dict(), path)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(f"{path.stem}/.info", json.dumps(asdict(self.shape)))


def _shape_of(path: Path) -> QuantizerShape:
    """The sizes in the checkpoint's `.info` entry, or the first checkpoints' when it has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [name for name in archive.namelist() if name.endswith("/.info")]
            recorded = json.loads(archive.read(entries[0])) if entries else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a Bark quantizer checkpoint (a torch zip with an optional .info entry: "
                              f"{err})") from err
    fields = {name: recorded[name] for name in ("input_size", "hidden_size", "output_size", "version")
              if name in recorded}
    if not all(isinstance(value, int) for value in fields.values()):
        raise CheckpointError(f"{path}: its .info entry must hold integer sizes, got {recorded}")
    return QuantizerShape(**fields)


def load_quantizer(checkpoint: str | Path) -> BarkSemanticQuantizer:
    """A quantizer from a community checkpoint (e.g. quantifier_hubert_base_ls960_14.pth), on the CPU, in eval
    mode. Raises CheckpointError naming the file when it is not one."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Bark quantizer checkpoint {path} not found; give a checkpoint of "
                                "gitmylo/bark-voice-cloning-HuBERT-quantizer, e.g. quantifier_hubert_base_ls960_14.pth")
    quantizer = BarkSemanticQuantizer(_shape_of(path))
    state = load_untrusted(path, "Bark quantizer state dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        quantizer.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not match a version-{quantizer.shape.version} Bark quantizer of "
                              f"sizes {asdict(quantizer.shape)} ({err})") from err
    quantizer.source = path.name
    quantizer.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return quantizer.eval().requires_grad_(False)
