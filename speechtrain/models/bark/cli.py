"""Bark's command lines.

`speechtrain-bark-generate --semantic DIR --coarse DIR --fine DIR --codec-checkpoint PATH --text "..." --out
out.wav [--voice voice.npz]`: text to speech through Bark's three sub-models and the 24 kHz EnCodec decoder, from a
voice preset when given. `speechtrain-bark-voice --tokens DIR --utterance ID --out voice.npz`: a voice preset from
one utterance of a tokens folder.

The folders are Hugging Face-format Bark sub-models (what `python train.py recipe=bark_*` exports, or the
`semantic` / `coarse_acoustics` / `fine_acoustics` of transformers' Bark saved with `save_pretrained`); the text
tokenizer (`vocab.txt`) comes from the semantic folder unless `--tokenizer` names another. Sampling follows
suno-ai/bark's defaults; `--greedy` decodes every stage greedily.

It lives in Bark's folder because it is Bark's alone (the generic command lines in `speechtrain/cli/` name no
family); it is plain Python over the sub-models, the text tokenizer and the codec, like the rest of the folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import soundfile
import torch

from speechtrain.data.bark_data import bark_compatible_semantic_ids, check_token_info
from speechtrain.data.codecs import EncodecCodec
from speechtrain.data.token_shards import INFO_FILE, read_token_info, read_token_shards
from speechtrain.errors import CheckpointError, ConfigError, DataError
from speechtrain.models.bark.generation import generate_audio
from speechtrain.models.bark.hub import load_pretrained
from speechtrain.models.bark.layouts import DEFAULTS
from speechtrain.models.bark.tokenizer import BarkTextTokenizer
from speechtrain.models.bark.voice import load_voice, save_voice, voice_from_tokens

logger = logging.getLogger(__name__)


def _load(folder: str | Path, kind: str, device: str) -> torch.nn.Module:
    model = load_pretrained(folder)
    if model.config.model_type != kind:
        raise CheckpointError(f"{folder}: holds a {model.config.model_type!r} model, expected {kind!r}")
    return model.to(device).eval()


def bark_generate(
    text: str,
    semantic_dir: str | Path,
    coarse_dir: str | Path,
    fine_dir: str | Path,
    codec_checkpoint: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    greedy: bool = False,
    max_semantic_tokens: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    voice: str | Path | None = None,
) -> tuple[torch.Tensor, int]:
    """A 1-D waveform for `text` and its sampling rate (24 kHz); the same seed gives the same audio.
    `max_semantic_tokens` bounds the length (default Bark's 768 semantic tokens, about 15 s); `voice` is an `.npz`
    voice preset to continue from (Bark's, or `speechtrain-bark-voice`'s)."""
    if not text.strip():
        raise ConfigError("nothing to say: the text is empty")
    preset = None if voice is None else load_voice(voice)
    tokenizer = BarkTextTokenizer.from_pretrained(tokenizer_dir or semantic_dir)
    semantic = _load(semantic_dir, "semantic", device)
    coarse = _load(coarse_dir, "coarse_acoustics", device)
    fine = _load(fine_dir, "fine_acoustics", device)
    codec = EncodecCodec(bandwidth=6.0, checkpoint=codec_checkpoint).to(device)
    temperatures = ({"semantic_temperature": None, "coarse_temperature": None, "fine_temperature": None}
                    if greedy else {})
    config = DEFAULTS if max_semantic_tokens is None else dataclasses.replace(
        DEFAULTS, semantic=dataclasses.replace(DEFAULTS.semantic, max_new_tokens=max_semantic_tokens))
    generator = torch.Generator(device).manual_seed(seed)
    waveform = generate_audio(text, tokenizer, semantic, coarse, fine, codec, config, generator=generator,
                              progress=progress, voice=preset, **temperatures)
    return waveform.cpu(), codec.sample_rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--semantic", required=True, help="Bark semantic model folder (with vocab.txt)")
    parser.add_argument("--coarse", required=True, help="Bark coarse model folder")
    parser.add_argument("--fine", required=True, help="Bark fine model folder")
    parser.add_argument("--codec-checkpoint", help="EnCodec 24 kHz weights (encodec_24khz-d7cc33bc.th); "
                        "omitted: random weights, for smoke tests only")
    parser.add_argument("--tokenizer", help="folder with the BERT vocab.txt (default: the semantic folder)")
    parser.add_argument("--text", required=True)
    parser.add_argument("--out", required=True, help="WAV file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--max-semantic-tokens", type=int, help="length bound (default 768, about 15 s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--voice", help="an .npz voice preset (Bark's history prompt), e.g. speechtrain-bark-voice's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        waveform, rate = bark_generate(args.text, args.semantic, args.coarse, args.fine, args.codec_checkpoint,
                                       args.tokenizer, args.seed, args.greedy, args.max_semantic_tokens,
                                       args.device, voice=args.voice)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"speechtrain-bark-generate: error: {exc}\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(out, waveform.numpy(), rate)
    print(f"wrote {out} ({len(waveform) / rate:.2f} s)")


def voice_main(argv: list[str] | None = None) -> None:
    """`speechtrain-bark-voice`: a voice preset from one utterance of a tokens folder."""
    parser = argparse.ArgumentParser(prog="speechtrain-bark-voice", description=voice_main.__doc__.split(": ", 1)[1])
    parser.add_argument("--tokens", required=True, help="a tokens folder written by speechtrain-tokenize")
    parser.add_argument("--utterance", required=True, help="the id of the utterance whose voice to keep")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        info = read_token_info(args.tokens)
        where = Path(args.tokens) / INFO_FILE
        check_token_info(info, "coarse_acoustics", where)  # the codec's 8 codebooks and the semantic ids
        if not bark_compatible_semantic_ids(info):
            logger.warning("%s: the semantic ids are not Bark's own (semantic.bark_compatible is not true): this "
                           "preset suits a model trained on this folder's ids, not the pretrained suno/bark", where)
        utterances = {utterance.id: utterance for utterance in read_token_shards(args.tokens)}
        if args.utterance not in utterances:
            known = ", ".join(sorted(utterances)[:5])
            raise DataError(f"{args.tokens}: no utterance {args.utterance!r} (it holds {len(utterances)}, e.g. "
                            f"{known})")
        chosen = utterances[args.utterance]
        out = save_voice(voice_from_tokens(chosen.semantic, chosen.acoustic), args.out)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"speechtrain-bark-voice: error: {err}\n")
    print(f"wrote {out}: the voice of {chosen.id} ({chosen.duration:.2f} s, {len(chosen.semantic)} semantic ids, "
          f"{len(chosen.acoustic)} codec frames)")


if __name__ == "__main__":
    main()
