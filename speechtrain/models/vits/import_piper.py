"""`speechtrain-import-piper VOICE.onnx OUT_DIR`: a Piper voice (its `.onnx` with the `.onnx.json` beside it, or a
`piper.train` Lightning checkpoint) as a speechtrain VITS folder, to fine-tune (`model.pretrained=OUT_DIR`) and to
export back (`speechtrain-export OUT_DIR VOICE_DIR --format piper`).

The folder gets config.json, model.safetensors, `piper_voice.json` (the voice config, for Piper's phonemizer and
the export) and a model card. An `.onnx` has no posterior encoder: its weights stay freshly initialised, and the
card says so; recover it before GAN fine-tuning (docs: "Fine-tune a Piper voice").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechtrain.importing import run_import_command, write_imported_folder
from speechtrain.models.vits.piper import load_piper_voice


def import_piper(source: str | Path, out_dir: str | Path, trust_checkpoint: bool = False) -> Path:
    """Writes the speechtrain VITS folder of the Piper voice `source` into `out_dir`."""
    source, out_dir = Path(source), Path(out_dir)
    model, tokenizer = load_piper_voice(source, trust_checkpoint=trust_checkpoint)
    lacks = " (an ONNX voice: posterior encoder and duration posterior fresh)" * (source.suffix == ".onnx")
    return write_imported_folder(out_dir, f"the Piper voice `{source.name}` (speechtrain-import-piper){lacks}",
                                 model, tokenizer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a Piper voice .onnx (with VOICE.onnx.json beside it) or a piper.train .ckpt")
    parser.add_argument("out_dir", help="the speechtrain VITS folder to write")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle whatever a .ckpt holds (it can run code); only for a file whose origin you know")
    run_import_command("speechtrain-import-piper", parser, argv, lambda args: import_piper(
        args.source, args.out_dir, trust_checkpoint=args.trust_checkpoint), "source")


if __name__ == "__main__":
    main()
