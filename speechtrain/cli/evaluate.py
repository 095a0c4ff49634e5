"""`speechtrain-evaluate MODEL --data-format F --data-path P`: WER and CER of a speech recogniser on a corpus, or
`speechtrain-evaluate TTS_MODEL --sentences FILE --asr-model ASR`: the intelligibility of a speech synthesiser.

MODEL is a Hugging Face-format folder (a speechtrain export, or a Whisper or Speech2Text folder saved by
transformers) or a Lightning checkpoint written by `python train.py` (its config.json, tokenizer and feature
extractor travel inside it). Every corpus format speechtrain trains on is read. References and hypotheses are
compared after a named normaliser (speechtrain/scoring.py), the same one validation uses with `task.normalizer`,
so the number is comparable with a run's `val/wer` and, with `whisper_english`, with published Whisper WERs.

Writes `OUT/results.json` (rates, edit counts, utterances scored and skipped, decoding settings, model, corpus,
normaliser, speechtrain version) and `OUT/utterances.jsonl` (one line per utterance with its reference,
hypothesis and edits, or why it was skipped). An utterance whose audio is missing or unreadable, or whose
reference is empty after normalisation, is skipped and counted, never a crash.

With `--sentences`, MODEL is a text-to-speech folder (a VITS export) or checkpoint: each sentence is spoken
(seeded: the same `--seed` gives the same audio), written to `OUT/wavs/<id>.wav`, transcribed by the `--asr-model`
and scored against the sentence; the WER and CER say how intelligible the speech is (to that recogniser). A
sentences file holds one sentence per line (ids sentence_0001, ...) or `id|text` lines (LJSpeech's metadata.csv
works); blank lines are ignored. `--references CORPUS` adds the mel-cepstral distortion after DTW against the
corpus's recording of the same id (speechtrain/scoring.py); sentences without one are counted.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import soundfile
import torch
from tqdm.auto import tqdm

from speechtrain.cli.export import export_checkpoint
from speechtrain.cli.synthesize import Synthesizer, write_wav
from speechtrain.cli.transcribe import Transcriber
from speechtrain.data.audio import AudioError, load_audio
from speechtrain.data.corpora import FORMATS, CorpusSpec, Utterance, read_corpus, read_sentences
from speechtrain.errors import CheckpointError, SpeechtrainError
from speechtrain.hub import read_model_type
from speechtrain.long_form import Segment, srt, vtt
from speechtrain.models.registry import get_family
from speechtrain.scoring import (
    MCD_SETTINGS,
    NORMALIZERS,
    ErrorCounts,
    count_errors,
    get_normalizer,
    mel_cepstral_distortion,
)

RESULTS_NAME, UTTERANCES_NAME, WAVS_NAME, SUBTITLES_NAME = "results.json", "utterances.jsonl", "wavs", "subtitles"
ASR_TAG, TTS_TAG = "automatic-speech-recognition", "text-to-speech"  # the families' model card pipeline tags


@contextmanager
def model_folder(model: str | Path, pipeline_tag: str, trust_checkpoint: bool = False) -> Iterator[Path]:
    """The folder of `model`, or of a `.ckpt` exported into a temporary folder for the duration; a CheckpointError
    when its family does the other job (a synthesiser where a recogniser is needed, or the reverse)."""
    model = Path(model)
    with tempfile.TemporaryDirectory(prefix="speechtrain-evaluate-") if model.is_file() else nullcontext() as exported:
        folder = export_checkpoint(model, exported, trust_checkpoint=trust_checkpoint) if exported else model
        family = get_family(read_model_type(folder))
        if family.card.pipeline_tag != pipeline_tag:
            raise CheckpointError(f"{model}: a {family.model_type} model ({family.card.pipeline_tag}), where a "
                                  f"{pipeline_tag} model is needed")
        yield folder


def load_transcriber(model: str | Path, device: str = "cpu", num_beams: int = 1, language: str | None = None,
                     trust_checkpoint: bool = False) -> Transcriber:
    """A Transcriber for a speech recognition folder or a `.ckpt`."""
    with model_folder(model, ASR_TAG, trust_checkpoint) as folder:
        return Transcriber(folder, device, num_beams, language)


def load_synthesizer(model: str | Path, device: str = "cpu", trust_checkpoint: bool = False) -> Synthesizer:
    """A Synthesizer for a text-to-speech folder or a `.ckpt`."""
    with model_folder(model, TTS_TAG, trust_checkpoint) as folder:
        return Synthesizer(folder, device)


def _batches(items: Sequence[Utterance], size: int) -> Iterator[Sequence[Utterance]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read(utterance: Utterance, sampling_rate: int) -> torch.Tensor:
    return load_audio(utterance.audio_bytes or utterance.audio_path, sampling_rate, name=utterance.audio_path)


def _distortion(utterance: Utterance, reference: Utterance | None) -> tuple[dict[str, Any], str | None]:
    """The row fields of the MCD against `reference`, and why there is none (or None)."""
    if reference is None:
        return {"mcd_skipped": "no reference"}, "no reference"
    rate = MCD_SETTINGS["sample_rate"]
    try:
        reference_audio = _read(reference, rate)
    except (AudioError, FileNotFoundError) as error:
        return {"reference_audio": reference.audio_path, "mcd_skipped": f"unreadable reference: {error}"}, \
            "unreadable reference"
    return {"reference_audio": reference.audio_path,
            "mcd": mel_cepstral_distortion(reference_audio, _read(utterance, rate))}, None


def evaluate_asr(
    transcriber: Transcriber,
    utterances: Sequence[Utterance],
    out_dir: str | Path,
    normalizer: str = "basic",
    batch_size: int = 8,
    description: dict[str, Any] | None = None,
    references: Mapping[str, Utterance] | None = None,
    timestamps: bool = False,
) -> dict[str, Any]:
    """Transcribes and scores `utterances`, writes the two result files into `out_dir`, returns the results.

    `description` (model, corpus, decoding settings) is written into the results as given. With `references` (by
    utterance id), each scored utterance is also compared with its reference recording by MCD. With `timestamps`,
    each row holds its timed `segments` and `out_dir/subtitles/` an `.srt` and a `.vtt` per utterance."""
    normalize = get_normalizer(normalizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    totals, skipped, started = ErrorCounts(), Counter(), time.perf_counter()
    distortions, without_distortion = [], Counter()
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
                        waveforms.append(_read(utterance, sampling_rate))
                        scorable.append((row, reference, utterance))
                    except (AudioError, FileNotFoundError) as error:
                        problem = f"unreadable audio: {error}"
                if problem is not None:
                    skipped[problem.split(":")[0]] += 1
                    row["skipped"] = problem
                rows.append(row)
            if timestamps:
                timed = [transcriber.transcribe_segments(waveform) for waveform in waveforms]
                hypotheses = [" ".join(segment.text for segment in segments) for segments in timed]
                for (row, _, utterance), segments in zip(scorable, timed, strict=True):
                    row["segments"] = [asdict(segment) for segment in segments]
                    _write_subtitles(out_dir / SUBTITLES_NAME, utterance.id, segments)
            else:
                hypotheses = transcriber.transcribe_waveforms(waveforms) if waveforms else []
            for (row, reference, utterance), hypothesis in zip(scorable, hypotheses, strict=True):
                normalized_hypothesis = normalize(hypothesis)
                errors = count_errors([reference], [normalized_hypothesis])
                totals += errors
                row.update(hypothesis=hypothesis, normalized_reference=reference,
                           normalized_hypothesis=normalized_hypothesis, **errors.as_dict())
                if references is not None:
                    fields, problem = _distortion(utterance, references.get(utterance.id))
                    row.update(fields)
                    if problem is None:
                        distortions.append(fields["mcd"])
                    else:
                        without_distortion[problem] += 1
            lines.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            progress.update(len(batch))
    seconds = time.perf_counter() - started
    scored = len(utterances) - sum(skipped.values())
    distortion = {} if references is None else {
        "mcd": sum(distortions) / len(distortions) if distortions else None, "mcd_utterances": len(distortions),
        "mcd_skipped": sum(without_distortion.values()), "mcd_skipped_by_reason": without_distortion,
        "mcd_settings": MCD_SETTINGS,
    }
    results = {
        **totals.as_dict(), "utterances": scored, "skipped": sum(skipped.values()), "skipped_by_reason": skipped,
        **distortion, "normalizer": normalizer, **(description or {}), "seconds": round(seconds, 3),
        "utterances_per_second": round(len(utterances) / max(seconds, 1e-9), 3),
        "speechtrain_version": _version(),
    }
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def _write_subtitles(folder: Path, utterance_id: str, segments: Sequence[Segment]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{utterance_id}.srt").write_text(srt(segments), encoding="utf-8")
    (folder / f"{utterance_id}.vtt").write_text(vtt(segments), encoding="utf-8")


def score_recordings(
    transcriber: Transcriber,
    ids: Sequence[str],
    audio: Sequence[str | Path | torch.Tensor],
    sentences: Sequence[str],
    out_dir: str | Path,
    sample_rate: int | None = None,
    **evaluate: Any,
) -> dict[str, Any]:
    """`evaluate_asr` of speech said from `sentences`: `audio` holds files or 1-D waveforms at `sample_rate`
    (synthesised, or recordings scored the same way). `evaluate` are its other arguments (normalizer, batch_size,
    description, references)."""
    if not len(ids) == len(audio) == len(sentences):
        raise ValueError(f"{len(ids)} ids, {len(audio)} recordings and {len(sentences)} sentences")
    utterances = []
    for utterance_id, speech, text in zip(ids, audio, sentences):
        if isinstance(speech, torch.Tensor):
            if sample_rate is None:
                raise ValueError("waveforms need their sample_rate")
            encoded = io.BytesIO()  # float WAV in memory: lossless, and read as any corpus's audio bytes
            soundfile.write(encoded, speech.numpy(), sample_rate, format="WAV", subtype="FLOAT")
            utterances.append(Utterance(utterance_id, f"<waveform {utterance_id}>", text,
                                        audio_bytes=encoded.getvalue()))
        else:
            utterances.append(Utterance(utterance_id, str(speech), text))
    return evaluate_asr(transcriber, utterances, out_dir, **evaluate)


def evaluate_tts(
    synthesizer: Synthesizer,
    transcriber: Transcriber,
    sentences: Sequence[tuple[str, str]],
    out_dir: str | Path,
    seed: int = 0,
    speaker_id: int | None = None,
    description: dict[str, Any] | None = None,
    **evaluate: Any,
) -> dict[str, Any]:
    """Speaks the `(id, text)` sentences into `out_dir/wavs/<id>.wav` (seeded), then scores those files with
    `score_recordings`, to which `evaluate` goes (normalizer, batch_size, references)."""
    wavs = Path(out_dir) / WAVS_NAME
    wavs.mkdir(parents=True, exist_ok=True)
    ids, texts = [i for i, _ in sentences], [t for _, t in sentences]
    paths = [wavs / f"{sentence_id}.wav" for sentence_id in ids]
    started = time.perf_counter()
    speech = synthesizer.speak(texts, speaker_id=speaker_id, seed=seed)
    for path, waveform in zip(paths, tqdm(speech, total=len(paths), unit="utt", desc="synthesising")):
        write_wav(path, waveform, synthesizer.sampling_rate)
    synthesis = {"seed": seed, "speaker_id": speaker_id, "sampling_rate": synthesizer.sampling_rate,
                 "seconds": round(time.perf_counter() - started, 3)}
    return score_recordings(transcriber, ids, paths, texts, out_dir,
                            description={**(description or {}), "synthesis": synthesis}, **evaluate)


def _version() -> str:
    from speechtrain import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the two commands
    parser.add_argument("model", help="a Hugging Face-format folder (an export, a transformers Whisper or "
                                      "Speech2Text folder) or a Lightning checkpoint (outputs/.../last.ckpt); with "
                                      "--sentences, a text-to-speech one (a VITS)")
    corpus = parser.add_argument_group("speech recognition: a transcribed corpus")
    corpus.add_argument("--data-format", choices=FORMATS, help="how the corpus is laid out")
    corpus.add_argument("--data-path", help="the corpus folder or manifest")
    corpus.add_argument("--split", default=None, help="split of a saved Hugging Face dataset (format hf)")
    corpus.add_argument("--text-column", default="text", help="text column (format hf)")
    corpus.add_argument("--audio-column", default="audio", help="audio column (format hf)")
    speech = parser.add_argument_group("speech synthesis: sentences spoken by MODEL, heard by --asr-model")
    speech.add_argument("--sentences", type=Path, help="one sentence per line, or id|text lines")
    speech.add_argument("--asr-model", help="the speech recognition folder or checkpoint that transcribes the speech")
    speech.add_argument("--seed", type=int, default=0, help="the same seed gives the same speech")
    speech.add_argument("--speaker-id", type=int, default=None)
    speech.add_argument("--references", help="a corpus with recordings of the sentences (by id): adds MCD")
    speech.add_argument("--references-format", default="ljspeech", choices=FORMATS)
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances or sentences")
    parser.add_argument("--normalizer", default="basic", choices=NORMALIZERS,
                        help="text normaliser before scoring (whisper_english: as published Whisper WERs)")
    parser.add_argument("--beams", type=int, default=1, help="beam size (1 = greedy)")
    parser.add_argument("--timestamps", action="store_true",
                        help="decode with timestamps: segments in utterances.jsonl, subtitles/ID.srt and .vtt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--language", default=None, help="language token for multilingual models, e.g. en, de")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="evaluation", help="folder for results.json and utterances.jsonl (and "
                                                            "wavs/ with --sentences)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle whatever a .ckpt holds (it can run code): only for a file whose origin you "
                             "know")
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Reads the inputs (sentences and corpora first: their mistakes show before a model loads), then evaluates."""
    decoding = {"beams": args.beams, "batch_size": args.batch_size, "language": args.language, "device": args.device}
    evaluate = {"normalizer": args.normalizer, "batch_size": args.batch_size}
    if args.sentences is None:
        corpus = CorpusSpec(format=args.data_format, path=args.data_path, split=args.split,
                            audio_column=args.audio_column, text_column=args.text_column, limit=args.limit)
        utterances = read_corpus(corpus)
        transcriber = load_transcriber(args.model, args.device, args.beams, args.language, args.trust_checkpoint)
        description = {"model": str(args.model), "model_type": _model_type(transcriber),
                       "corpus": {key: value for key, value in asdict(corpus).items() if value is not None},
                       "decoding": decoding}
        return evaluate_asr(transcriber, utterances, args.out, description=description, timestamps=args.timestamps,
                            **evaluate)
    sentences = read_sentences(args.sentences)[: args.limit]
    if args.references is not None:
        recordings = read_corpus(CorpusSpec(format=args.references_format, path=args.references))
        evaluate["references"] = {utterance.id: utterance for utterance in recordings}
    synthesizer = load_synthesizer(args.model, args.device, args.trust_checkpoint)
    transcriber = load_transcriber(args.asr_model, args.device, args.beams, args.language, args.trust_checkpoint)
    description = {"model": str(args.model), "model_type": _model_type(synthesizer),
                   "asr_model": str(args.asr_model), "asr_model_type": _model_type(transcriber),
                   "sentences": str(args.sentences), "decoding": decoding,
                   **({"references": {"format": args.references_format, "path": args.references}}
                      if args.references is not None else {})}
    return evaluate_tts(synthesizer, transcriber, sentences, args.out, args.seed, args.speaker_id, description,
                        **evaluate)


def _model_type(loaded: Transcriber | Synthesizer) -> str:
    return loaded.model.config.to_hf_dict()["model_type"]


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.sentences is None and (args.data_format is None or args.data_path is None):
        parser.error("give --data-format and --data-path (a recogniser on a corpus), or --sentences and --asr-model "
                     "(a synthesiser)")
    if args.sentences is not None and (args.asr_model is None or args.data_format or args.data_path):
        parser.error("--sentences evaluates a synthesiser: give --asr-model, and no --data-format or --data-path "
                     "(recordings to compare with go in --references)")
    try:
        results = _run(args)
    except (FileNotFoundError, SpeechtrainError) as exc:
        parser.exit(1, f"speechtrain-evaluate: error: {exc}\n")
    line = (f"WER {100 * results['wer']:.2f} %  CER {100 * results['cer']:.2f} %  ({results['utterances']} "
            f"utterances, {results['skipped']} skipped, normalizer {args.normalizer})")
    if results.get("mcd") is not None:
        line += f"  MCD {results['mcd']:.2f} dB ({results['mcd_utterances']} with a reference)"
    print(f"{line} -> {Path(args.out) / RESULTS_NAME}")
    sys.exit(0)


if __name__ == "__main__":
    main()
