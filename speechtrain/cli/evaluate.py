"""`speechtrain-evaluate MODEL --data-format F --data-path P`: WER and CER of a speech recogniser on a corpus.

MODEL is a Hugging Face-format folder (a speechtrain export, or a Whisper or Speech2Text folder saved by
transformers) or a Lightning checkpoint written by `python train.py` (its config.json, tokenizer and feature
extractor travel inside it). Every corpus format speechtrain trains on is read. References and hypotheses are
compared after a named normaliser (speechtrain/scoring.py), the same one validation uses with `task.normalizer`,
so the number is comparable with a run's `val/wer` and, with `whisper_english`, with published Whisper WERs.

Writes `OUT/results.json` (rates, edit counts, utterances scored and skipped, decoding settings, model, corpus,
normaliser, speechtrain version) and `OUT/utterances.jsonl` (one line per utterance with its reference,
hypothesis and edits, or why it was skipped). An utterance whose audio is missing or unreadable, or whose
reference is empty after normalisation, is skipped and counted, never a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from speechtrain.cli.export import export_checkpoint
from speechtrain.cli.transcribe import Transcriber
from speechtrain.data.audio import AudioError, load_audio
from speechtrain.data.corpora import FORMATS, CorpusSpec, Utterance, read_corpus
from speechtrain.errors import SpeechtrainError
from speechtrain.scoring import NORMALIZERS, ErrorCounts, count_errors, get_normalizer

RESULTS_NAME, UTTERANCES_NAME = "results.json", "utterances.jsonl"


def load_transcriber(model: str | Path, device: str = "cpu", num_beams: int = 1, language: str | None = None,
                     trust_checkpoint: bool = False) -> Transcriber:
    """A Transcriber for a model folder or a `.ckpt` (exported into a temporary folder first)."""
    model = Path(model)
    if model.is_file():
        with tempfile.TemporaryDirectory(prefix="speechtrain-evaluate-") as folder:
            export_checkpoint(model, folder, trust_checkpoint=trust_checkpoint)
            return Transcriber(folder, device, num_beams, language)
    return Transcriber(model, device, num_beams, language)


def _batches(items: Sequence[Utterance], size: int) -> Iterator[Sequence[Utterance]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_asr(
    transcriber: Transcriber,
    utterances: Sequence[Utterance],
    out_dir: str | Path,
    normalizer: str = "basic",
    batch_size: int = 8,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Transcribes and scores `utterances`, writes the two result files into `out_dir`, returns the results.

    `description` (model, corpus, decoding settings) is written into the results as given."""
    normalize = get_normalizer(normalizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    totals, skipped, started = ErrorCounts(), Counter(), time.perf_counter()
    sampling_rate = transcriber.features.sampling_rate
    with (out_dir / UTTERANCES_NAME).open("w", encoding="utf-8") as lines, \
            tqdm(total=len(utterances), unit="utt", desc="evaluating", dynamic_ncols=True) as progress:
        for batch in _batches(utterances, batch_size):
            rows: list[dict[str, Any]] = []  # one per utterance, in corpus order
            scorable, waveforms = [], []
            for utterance in batch:
                row = {"id": utterance.id, "audio": utterance.audio_path, "reference": utterance.text}
                reference = normalize(utterance.text)
                problem = None if reference else "empty reference after normalisation"
                if problem is None:
                    try:
                        waveforms.append(load_audio(utterance.audio_bytes or utterance.audio_path, sampling_rate,
                                                    name=utterance.audio_path))
                        scorable.append((row, reference))
                    except (AudioError, FileNotFoundError) as error:
                        problem = f"unreadable audio: {error}"
                if problem is not None:
                    skipped[problem.split(":")[0]] += 1
                    row["skipped"] = problem
                rows.append(row)
            hypotheses = transcriber.transcribe_waveforms(waveforms) if waveforms else []
            for (row, reference), hypothesis in zip(scorable, hypotheses, strict=True):
                normalized_hypothesis = normalize(hypothesis)
                errors = count_errors([reference], [normalized_hypothesis])
                totals += errors
                row.update(hypothesis=hypothesis, normalized_reference=reference,
                           normalized_hypothesis=normalized_hypothesis, **errors.as_dict())
            lines.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            progress.update(len(batch))
    seconds = time.perf_counter() - started
    scored = len(utterances) - sum(skipped.values())
    results = {
        **totals.as_dict(), "utterances": scored, "skipped": sum(skipped.values()), "skipped_by_reason": skipped,
        "normalizer": normalizer, **(description or {}), "seconds": round(seconds, 3),
        "utterances_per_second": round(len(utterances) / max(seconds, 1e-9), 3),
        "speechtrain_version": _version(),
    }
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def _version() -> str:
    from speechtrain import __version__

    return __version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a Hugging Face-format folder (an export, a transformers Whisper or "
                                      "Speech2Text folder) or a Lightning checkpoint (outputs/.../last.ckpt)")
    parser.add_argument("--data-format", required=True, choices=FORMATS, help="how the corpus is laid out")
    parser.add_argument("--data-path", required=True, help="the corpus folder or manifest")
    parser.add_argument("--split", default=None, help="split of a saved Hugging Face dataset (format hf)")
    parser.add_argument("--text-column", default="text", help="text column (format hf)")
    parser.add_argument("--audio-column", default="audio", help="audio column (format hf)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    parser.add_argument("--normalizer", default="basic", choices=NORMALIZERS,
                        help="text normaliser before scoring (whisper_english: as published Whisper WERs)")
    parser.add_argument("--beams", type=int, default=1, help="beam size (1 = greedy)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--language", default=None, help="language token for multilingual models, e.g. en, de")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="evaluation", help="folder for results.json and utterances.jsonl")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle whatever a .ckpt holds (it can run code): only for a file whose origin you "
                             "know")
    args = parser.parse_args(argv)
    corpus = CorpusSpec(format=args.data_format, path=args.data_path, split=args.split,
                        audio_column=args.audio_column, text_column=args.text_column, limit=args.limit)
    try:
        utterances = read_corpus(corpus)
        transcriber = load_transcriber(args.model, args.device, args.beams, args.language, args.trust_checkpoint)
    except (FileNotFoundError, SpeechtrainError) as exc:
        parser.exit(1, f"speechtrain-evaluate: error: {exc}\n")
    description = {
        "model": str(args.model), "model_type": transcriber.model.config.to_hf_dict()["model_type"],
        "corpus": {key: value for key, value in asdict(corpus).items() if value is not None},
        "decoding": {"beams": args.beams, "batch_size": args.batch_size, "language": args.language,
                     "device": args.device},
    }
    results = evaluate_asr(transcriber, utterances, args.out, args.normalizer, args.batch_size, description)
    print(f"WER {100 * results['wer']:.2f} %  CER {100 * results['cer']:.2f} %  ({results['utterances']} utterances, "
          f"{results['skipped']} skipped, normalizer {args.normalizer}) -> {Path(args.out) / RESULTS_NAME}")
    sys.exit(0)


if __name__ == "__main__":
    main()
