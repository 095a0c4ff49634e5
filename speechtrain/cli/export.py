"""`speechtrain-export SOURCE OUT_DIR [--format hf|piper|...]`: a Lightning checkpoint or a model folder to a
Hugging Face-format folder, or to another deployment format its family offers (`--format piper` for VITS voices
with Piper's phonemes: `VOICE.onnx` + `VOICE.onnx.json`; `--format ctranslate2` for Whisper, the folder
faster-whisper loads).

A folder of FSDP shards (`trainer=fsdp`'s checkpoints) is read in this one process, whatever the number of ranks
that wrote it. The checkpoint carries config.json, tokenizer and preprocessor files (see tasks/checkpointing.py), so
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

import torch
from torch import nn

from speechtrain.distributed import is_shard_folder, read_shard_folder
from speechtrain.errors import CheckpointError
from speechtrain.hub import load_processors, model_from_folder_config, read_model_type, resolve_pretrained, save_bundle
from speechtrain.model_card import write_model_card
from speechtrain.models.registry import families, get_family, resolve
from speechtrain.safe_load import load_checkpoint
from speechtrain.tasks.checkpointing import PRETRAINED_FILES_KEY, model_state_dict

EMA_CALLBACK_KEY = "EMAWeights"  # speechtrain.callbacks.EMAWeights' entry in a checkpoint's "callbacks"


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, trust_checkpoint: bool = False,
                      ema: bool = False) -> Path:
    """Write the checkpoint's model, tokenizer and feature extractor as a Hugging Face-format folder.

    `trust_checkpoint` unpickles anything the file holds (it may run code): only for a file whose origin is known.
    `ema`: the moving average of the weights that `EMAWeights` kept in the checkpoint, not its training weights."""
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    if is_shard_folder(checkpoint_path):  # trainer=fsdp's last.ckpt: one shard per rank, read here in one process
        checkpoint = read_shard_folder(checkpoint_path, trust_checkpoint)
    elif checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path, trust=trust_checkpoint)
    else:
        raise FileNotFoundError(f"checkpoint {checkpoint_path} not found (neither a file nor a folder of FSDP shards)")
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
    if ema:
        _load_moving_average(model, checkpoint, checkpoint_path)
    tokenizer, feature_extractor = load_processors(out_dir)
    save_bundle(out_dir, model, tokenizer, feature_extractor)
    config_yaml, metrics = _card_inputs(checkpoint_path)
    source = f"`{checkpoint_path}` (epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')})"
    write_model_card(out_dir, source, config_yaml, metrics)
    return out_dir


def _load_moving_average(model: nn.Module, checkpoint: dict, checkpoint_path: Path) -> None:
    """The average `EMAWeights` saved, by parameter name (tied weights are one parameter: set once, both follow)."""
    average = checkpoint.get("callbacks", {}).get(EMA_CALLBACK_KEY, {}).get("shadow")
    if not average:
        raise CheckpointError(f"{checkpoint_path} holds no moving average of the weights: train with "
                              "+callbacks@callbacks.ema=ema for one, or export without --ema")
    parameters = dict(model.named_parameters())
    unknown = sorted(set(average) - set(parameters))
    if unknown:
        raise CheckpointError(f"{checkpoint_path}: its moving average has weights the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, value in average.items():
            parameters[name].copy_(value)


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
           trust_checkpoint: bool = False, ema: bool = False) -> list[Path]:
    """`source` (a `.ckpt` written by a speechtrain task, or a Hugging Face-format model folder) in `export_format`
    under `out_dir`; returns what was written."""
    source, out_dir = Path(source), Path(out_dir)
    if export_format == HF_FORMAT:
        if source.is_dir() and not is_shard_folder(source):
            raise CheckpointError(f"{source} is already a Hugging Face-format folder; --format hf exports checkpoints")
        return [export_checkpoint(source, out_dir, trust_checkpoint, ema)]
    source = source if is_shard_folder(source) else Path(resolve_pretrained(source))  # a Hub id names a model folder
    if source.is_dir() and not is_shard_folder(source):
        return _export_folder(source, out_dir, export_format)
    with tempfile.TemporaryDirectory(prefix="speechtrain-export-") as folder:
        return _export_folder(export_checkpoint(source, folder, trust_checkpoint, ema), out_dir, export_format)


def _export_folder(folder: Path, out_dir: Path, export_format: str) -> list[Path]:
    family = get_family(read_model_type(folder), where=str(folder))
    if export_format not in family.export_formats:
        offered = ", ".join([HF_FORMAT, *family.export_formats])
        raise CheckpointError(f"{folder}: a {family.model_type} model exports as {offered}, not {export_format!r}")
    return resolve(family.export_formats[export_format])(folder, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a .ckpt written by python train.py (outputs/.../checkpoints/last.ckpt, a file "
                                       "or, under trainer=fsdp, a folder of shards), or, "
                                       "for formats other than hf, a model folder (an export, an imported voice)")
    parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors, tokenizer, ...)")
    parser.add_argument("--format", default=HF_FORMAT, choices=export_formats(), dest="export_format",
                        help="hf: a Hugging Face-format folder (default); piper: VOICE.onnx + VOICE.onnx.json")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle whatever the checkpoint holds, which can run code it carries; only for a file "
                             "whose origin you know (by default anything but tensors, numbers and strings is refused)")
    parser.add_argument("--ema", action="store_true",
                        help="export the moving average of the weights kept by +callbacks@callbacks.ema=ema instead of "
                             "the checkpoint's training weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        written = export(args.source, args.out_dir, args.export_format, trust_checkpoint=args.trust_checkpoint,
                         ema=args.ema)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"speechtrain-export: error: {exc}\n")
    print(f"exported {args.source} to " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
