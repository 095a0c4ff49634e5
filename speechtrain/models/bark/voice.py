"""Bark voice presets: the speaker prompts (history prompts) Bark's generation continues from.

A preset is an `.npz` file of three integer arrays, as suno-ai/bark ships them (`en_speaker_6.npz`) and transformers'
`BarkProcessor(voice_preset=path)` reads them:

    semantic_prompt  [T_s]      semantic ids of the prompt utterance (Bark's own ids for the pretrained suno/bark)
    coarse_prompt    [2, T_c]   EnCodec codes of its first two codebooks, 0..1023 (no id offsets)
    fine_prompt      [8, T_f]   EnCodec codes of all eight codebooks, 0..1023

`voice_from_tokens` makes one from an utterance of a tokens folder (what voice cloning does: the utterance's codes
and semantic ids), `save_voice` / `load_voice` write and read the file; `layouts.py` places the prompts as
generation places them, in generation and, when asked, in training.

`speechtrain-bark-voice --tokens DIR --utterance ID --out voice.npz` (`cli.py`) is the command line.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechtrain.errors import DataError
from speechtrain.models.bark.config import BarkGenerationConfig
from speechtrain.models.bark.layouts import DEFAULTS

PRESET_KEYS = ("semantic_prompt", "coarse_prompt", "fine_prompt")


@dataclass(frozen=True)
class VoicePreset:
    """A speaker prompt: `semantic_prompt` Long [T_s], `coarse_prompt` Long [2, T_c], `fine_prompt` Long [8, T_f]."""

    semantic_prompt: torch.Tensor
    coarse_prompt: torch.Tensor
    fine_prompt: torch.Tensor

    def check(self, where: str | Path = "voice preset", config: BarkGenerationConfig = DEFAULTS) -> VoicePreset:
        """Itself, once its shapes and id ranges are Bark's; a DataError naming `where` and the array otherwise."""
        coarse, fine = config.coarse.n_coarse_codebooks, config.fine.n_fine_codebooks
        expected = {"semantic_prompt": (1, None), "coarse_prompt": (2, coarse), "fine_prompt": (2, fine)}
        limits = {"semantic_prompt": config.semantic.semantic_vocab_size,
                  "coarse_prompt": config.fine.codebook_size, "fine_prompt": config.fine.codebook_size}
        for key in PRESET_KEYS:
            array = getattr(self, key)
            dims, rows = expected[key]
            if array.dim() != dims or (rows is not None and array.shape[0] != rows) or array.shape[-1] == 0:
                shape = "[frames]" if rows is None else f"[{rows}, frames]"
                raise DataError(f"{where}: {key} must be a non-empty {shape} array, got shape {tuple(array.shape)}")
            if array.dtype.is_floating_point or int(array.min()) < 0 or int(array.max()) >= limits[key]:
                raise DataError(f"{where}: {key} must hold integer ids in [0, {limits[key]}), got "
                                f"{array.dtype} in [{array.min().item()}, {array.max().item()}]")
        return self


def voice_from_tokens(semantic_ids: torch.Tensor, codes: torch.Tensor,
                      config: BarkGenerationConfig = DEFAULTS) -> VoicePreset:
    """The preset of one tokenized utterance: its semantic ids `[T_s]` and its EnCodec codes `[frames, levels]`
    (at least 8 levels), all of them, as voice-cloning tools make presets; generation keeps what it can use."""
    fine = config.fine.n_fine_codebooks
    if codes.dim() != 2 or codes.shape[1] < fine:
        raise DataError(f"a voice preset needs EnCodec codes [frames, >= {fine}] (6 kbps), got {tuple(codes.shape)}")
    all_books = codes[:, :fine].T.long().contiguous()  # [frames, levels] -> [8, frames]
    preset = VoicePreset(semantic_ids.long().flatten().clone(), all_books[: config.coarse.n_coarse_codebooks].clone(),
                         all_books)
    return preset.check("the utterance's tokens", config)


def save_voice(preset: VoicePreset, path: str | Path) -> Path:
    """Writes the `.npz` (int64 arrays, as Bark's presets); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise DataError(f"{path}: a voice preset is an .npz file")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: getattr(preset, key).cpu().numpy().astype(np.int64) for key in PRESET_KEYS})
    return path


def load_voice(path: str | Path, config: BarkGenerationConfig = DEFAULTS) -> VoicePreset:
    """A preset from an `.npz` file (Bark's, or `save_voice`'s), checked; no pickled objects are read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"voice preset {path} not found")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            values = {key: torch.from_numpy(np.array(arrays[key])) for key in PRESET_KEYS if key in arrays.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz voice preset ({err})") from err
    missing = [key for key in PRESET_KEYS if key not in values]
    if missing:
        raise DataError(f"{path}: a Bark voice preset holds {', '.join(PRESET_KEYS)}; missing {missing}")
    return VoicePreset(**values).check(path, config)
