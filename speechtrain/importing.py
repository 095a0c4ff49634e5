"""What every importer of a foreign format (a Piper voice, a CTranslate2 Whisper) shares: the folder it writes (a
Hugging Face-format bundle with a model card naming the source) and the shape of its command."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from speechtrain.errors import SpeechtrainError
from speechtrain.hub import save_bundle
from speechtrain.model_card import write_model_card


def write_imported_folder(out_dir: Path, source_note: str, model: nn.Module, tokenizer: Any,
                          feature_extractor: Any = None) -> Path:
    """`out_dir` as `load_bundle` reads it, with a model card whose origin line is `source_note`."""
    save_bundle(out_dir, model, tokenizer, feature_extractor)
    write_model_card(out_dir, source_note)
    return out_dir


def run_import_command(command: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                       importer: Callable[[argparse.Namespace], Path], source_argument: str) -> None:
    """Parses `argv` and runs `importer` on it: prints the folder written, or exits 1 with the user error (a
    missing file, a bad checkpoint) as `command: error: ...`; a genuine bug keeps its traceback."""
    args = parser.parse_args(argv)
    try:
        out = importer(args)
    except (FileNotFoundError, SpeechtrainError) as exc:
        parser.exit(1, f"{command}: error: {exc}\n")
    print(f"imported {getattr(args, source_argument)} to {out}")
