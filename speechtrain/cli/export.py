"""`speechtrain-export SOURCE OUT_DIR [--format hf|piper|...]`: a Lightning checkpoint or a model folder to a
Hugging Face-format folder, or to another deployment format its family offers (`--format piper` for VITS voices
with Piper's phonemes: `VOICE.onnx` + `VOICE.onnx.json`; `--format ctranslate2` for Whisper, the folder
faster-whisper loads).

The checkpoint carries config.json, tokenizer and preprocessor files (see tasks/checkpointing.py), so
no Hydra config is needed; the run's resolved config and metrics, when found beside the checkpoint, go
into a short model card. The checkpoint is unpickled with torch's `weights_only` rules (speechtrain/safe_load.py)
and refused if it holds anything that could run code, unless `--trust-checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from speechtrain.errors import CheckpointError
from speechtrain.hub import load_processors, model_from_folder_config, read_model_type, resolve_pretrained, save_bundle
from speechtrain.model_card import write_model_card
from speechtrain.models.registry import families, get_family, resolve
from speechtrain.safe_load import load_checkpoint
from speechtrain.tasks.checkpointing import PRETRAINED_FILES_KEY, model_state_dict


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, trust_checkpoint: bool = False) -> Path:
    """Write the checkpoint's model, tokenizer and feature extractor as a Hugging Face-format folder.

    `trust_checkpoint` unpickles anything the file holds (it may run code): only for a file whose origin is known."""
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path} not found")
    checkpoint = load_checkpoint(checkpoint_path, trust=trust_checkpoint)
    files = checkpoint.get(PRETRAINED_FILES_KEY)
    if not files:
        raise CheckpointError(
            f"{checkpoint_path} has no '{PRETRAINED_FILES_KEY}': it was not written by a speechtrain task"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out_dir / name).write_bytes(content)
    model = model_from_folder_config(out_dir)
    missing, unexpected = model.load_state_dict(model_state_dict(checkpoint), strict=False)
    if missing or unexpected:  # tied weights are saved under both names, so nothing may be missing
        raise CheckpointError(
            f"{checkpoint_path}: weights do not fit config.json (missing {missing}, unexpected {unexpected})"
        )
    tokenizer, feature_extractor = load_processors(out_dir)
    save_bundle(out_dir, model, tokenizer, feature_extractor)
    config_yaml, metrics = _card_inputs(checkpoint_path)
    source = f"`{checkpoint_path}` (epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')})"
    write_model_card(out_dir, source, config_yaml, metrics)
    return out_dir


def _card_inputs(checkpoint_path: Path) -> tuple[str | None, dict | None]:
    """The run's resolved config and final metrics, when found beside the checkpoint (`python train.py` leaves
    `checkpoints/config.yaml` and `metrics.json`)."""
    config_file = checkpoint_path.parent / "config.yaml"
    metrics_file = checkpoint_path.parent.parent / "metrics.json"
    return (config_file.read_text() if config_file.is_file() else None,
            json.loads(metrics_file.read_text()) if metrics_file.is_file() else None)


HF_FORMAT = "hf"


def export_formats() -> list[str]:
    """`hf` and every format a registered family offers."""
    return [HF_FORMAT, *sorted({name for family in families().values() for name in family.export_formats})]


def export(source: str | Path, out_dir: str | Path, export_format: str = HF_FORMAT,
           trust_checkpoint: bool = False) -> list[Path]:
    """`source` (a `.ckpt` written by a speechtrain task, or a Hugging Face-format model folder) in `export_format`
    under `out_dir`; returns what was written."""
    source, out_dir = Path(source), Path(out_dir)
    if export_format == HF_FORMAT:
        if source.is_dir():
            raise CheckpointError(f"{source} is already a Hugging Face-format folder; --format hf exports checkpoints")
        return [export_checkpoint(source, out_dir, trust_checkpoint)]
    source = Path(resolve_pretrained(source))  # a Hub id is fine here: it names a model folder
    if source.is_dir():
        return _export_folder(source, out_dir, export_format)
    with tempfile.TemporaryDirectory(prefix="speechtrain-export-") as folder:
        return _export_folder(export_checkpoint(source, folder, trust_checkpoint), out_dir, export_format)


def _export_folder(folder: Path, out_dir: Path, export_format: str) -> list[Path]:
    family = get_family(read_model_type(folder), where=str(folder))
    if export_format not in family.export_formats:
        offered = ", ".join([HF_FORMAT, *family.export_formats])
        raise CheckpointError(f"{folder}: a {family.model_type} model exports as {offered}, not {export_format!r}")
    return resolve(family.export_formats[export_format])(folder, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a .ckpt written by python train.py (outputs/.../checkpoints/last.ckpt), or, "
                                       "for formats other than hf, a model folder (an export, an imported voice)")
    parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors, tokenizer, ...)")
    parser.add_argument("--format", default=HF_FORMAT, choices=export_formats(), dest="export_format",
                        help="hf: a Hugging Face-format folder (default); piper: VOICE.onnx + VOICE.onnx.json")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle whatever the checkpoint holds, which can run code it carries; only for a file "
                             "whose origin you know (by default anything but tensors, numbers and strings is refused)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        written = export(args.source, args.out_dir, args.export_format, trust_checkpoint=args.trust_checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"speechtrain-export: error: {exc}\n")
    print(f"exported {args.source} to " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
