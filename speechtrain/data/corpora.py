"""Corpus readers: every layout becomes the same `list[Utterance]`.

Readers only list what the corpus says; they do not open audio. `SpeechDataset` checks each
utterance (file present, readable, not too long) and reports what it drops.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from speechtrain.data.audio import AudioError, audio_info
from speechtrain.errors import ConfigError, DataError
from speechtrain.hub_ids import resolve_pretrained

LJSPEECH_LAYOUT = "expected metadata.csv and wavs/ (LJSpeech layout)"
LIBRISPEECH_LAYOUT = "expected <speaker>/<chapter>/*.trans.txt files with <id>.flac beside them (LibriSpeech layout)"
LIBRITTS_LAYOUT = (
    "expected <speaker>/<chapter>/<utterance>.wav files with <utterance>.normalized.txt beside them (LibriTTS layout)"
)
HF_LAYOUT = (
    "expected a dataset saved with datasets' save_to_disk (dataset_info.json or dataset_dict.json) "
    "or an audiofolder (metadata.csv or metadata.jsonl with a file_name column, optionally in <split>/)"
)
FORMATS = ("ljspeech", "librispeech", "libritts", "manifest", "hf")


@dataclass
class Utterance:
    """One transcribed recording. `audio_bytes` holds the encoded file when an HF dataset embeds it;
    `audio_path` then only names it in messages."""

    id: str
    audio_path: str
    text: str
    duration: float | None = None  # seconds, when the corpus states it
    speaker: str | None = None
    audio_bytes: bytes | None = None
    prompt: str | None = None  # previous text or a prompt to condition on (Whisper's <|startofprev|>), not scored
    language: str | None = None  # the utterance's language code, for multilingual recognisers
    segments: tuple[dict, ...] | None = None  # timed parts {start, end, text} (seconds), for timestamp training


def read_ljspeech(root: str | Path) -> list[Utterance]:
    """`root/metadata.csv` lines `id|text|normalized_text`, audio in `root/wavs/<id>.wav`.

    The normalized column (numbers and abbreviations spelled out) is used when present.
    """
    root = Path(root)
    metadata = root / "metadata.csv"
    if not metadata.is_file() or not (root / "wavs").is_dir():
        raise FileNotFoundError(f"{LJSPEECH_LAYOUT} in {root}")
    utterances = []
    with metadata.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, 1):
            if line.strip():
                utterance_id, text = parse_ljspeech_line(line, f"{metadata}:{line_number}")
                audio_path = root / "wavs" / f"{utterance_id}.wav"
                utterances.append(Utterance(utterance_id, str(audio_path), text))
    return utterances


def parse_ljspeech_line(line: str, where: str) -> tuple[str, str]:
    """(id, text) of a metadata.csv line `id|text|normalized_text`; the normalized column when it is not empty.
    A DataError naming `where` (file:line) for a line without an id or a text column."""
    columns = line.rstrip("\r\n").split("|")
    if len(columns) < 2 or not columns[0]:
        raise DataError(f"{where}: expected 'id|text|normalized_text', got {line!r}")
    text = columns[2] if len(columns) > 2 and columns[2].strip() else columns[1]
    return columns[0], text.strip()


def read_librispeech(root: str | Path) -> list[Utterance]:
    """Every `*.trans.txt` below `root` (lines `<id> TRANSCRIPT`), with `<id>.flac` in the same folder;
    the speaker is the grandparent folder name (`<speaker>/<chapter>/`)."""
    root = Path(root)
    transcripts = sorted(root.rglob("*.trans.txt")) if root.is_dir() else []
    if not transcripts:
        raise FileNotFoundError(f"{LIBRISPEECH_LAYOUT} in {root}")
    utterances = []
    for transcript in transcripts:
        speaker = transcript.parent.parent.name
        with transcript.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                utterance_id, _, text = line.strip().partition(" ")
                audio_path = transcript.parent / f"{utterance_id}.flac"
                utterances.append(Utterance(utterance_id, str(audio_path), text.strip(), speaker=speaker))
    return utterances


def read_libritts(root: str | Path) -> list[Utterance]:
    """Every `<utterance>.wav` below `root` with its `<utterance>.normalized.txt` transcript beside it
    (LibriTTS and LibriTTS-R); the speaker is the grandparent folder name (`<speaker>/<chapter>/`).
    A wav without a transcript is left out (LibriTTS-R removed some)."""
    root = Path(root)
    transcripts = sorted(root.rglob("*.normalized.txt")) if root.is_dir() else []
    if not transcripts:
        raise FileNotFoundError(f"{LIBRITTS_LAYOUT} in {root}")
    utterances = []
    for transcript in tqdm(transcripts, desc=f"reading {root.name}", unit="utt", disable=len(transcripts) < 10_000):
        utterance_id = transcript.name.removesuffix(".normalized.txt")
        audio_path = transcript.with_name(f"{utterance_id}.wav")
        text = transcript.read_text(encoding="utf-8").strip()
        utterances.append(Utterance(utterance_id, str(audio_path), text, speaker=transcript.parent.parent.name))
    return utterances


def _segments(value: Any, where: str) -> tuple[dict, ...] | None:
    """A manifest's `segments`: a list of {start, end, text} with 0 <= start <= end, in order."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: segments must be a non-empty list of {{start, end, text}}, got {value!r}")
    segments, previous_end = [], 0.0
    for segment in value:
        if not isinstance(segment, dict) or not {"start", "end", "text"} <= segment.keys():
            raise DataError(f"{where}: each segment needs start, end and text, got {segment!r}")
        start, end = segment["start"], segment["end"]
        if not all(isinstance(t, (int, float)) for t in (start, end)) or not previous_end <= start <= end:
            raise DataError(f"{where}: segment {segment!r} must have numbers previous end <= start <= end")
        segments.append({"start": float(start), "end": float(end), "text": str(segment["text"])})
        previous_end = float(end)
    return tuple(segments)


def read_manifest(path: str | Path) -> list[Utterance]:
    """A NeMo JSONL manifest: one object per line with `audio_filepath`, `text`, `duration` and
    optionally `speaker`, `id`, `lang` (the language code), `prompt` (or `prev_text`: text to condition on, such as
    the previous utterance's transcript) and `segments` (`[{"start": s, "end": s, "text": ...}, ...]`, for
    Whisper's timestamp tokens). Relative audio paths are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a NeMo JSONL manifest (audio_filepath, text, duration per line) at {path}")
    utterances = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(entry).__name__}")
            for key in ("audio_filepath", "text"):
                if key not in entry:
                    raise DataError(f"{where}: missing key {key!r} (keys: {', '.join(entry) or 'none'})")
            duration = entry.get("duration")
            if duration is not None and not isinstance(duration, (int, float)):
                raise DataError(f"{where}: duration must be a number of seconds, got {duration!r}")
            audio_path = os.path.normpath(path.parent / Path(entry["audio_filepath"]).expanduser())
            speaker, language = entry.get("speaker"), entry.get("lang")
            prompt = entry.get("prompt", entry.get("prev_text"))
            for key, value in (("lang", language), ("prompt", prompt)):
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{where}: {key} must be a string, got {value!r}")
            segments = _segments(entry.get("segments"), where)
            utterances.append(
                Utterance(
                    id=str(entry.get("id", Path(entry["audio_filepath"]).stem)),
                    audio_path=str(audio_path),
                    text=str(entry["text"]),
                    duration=None if duration is None else float(duration),
                    speaker=None if speaker is None else str(speaker),
                    prompt=prompt or None,
                    language=language or None,
                    segments=segments,
                )
            )
    return utterances


def write_manifest(utterances: Iterable[Utterance], path: str | Path) -> None:
    """Writes a NeMo JSONL manifest (plus `id`), the input `read_manifest` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for utterance in utterances:
            if utterance.audio_bytes is not None and not Path(utterance.audio_path).is_file():
                raise DataError(
                    f"utterance {utterance.id!r} keeps its audio in memory (audio_bytes) and {utterance.audio_path} "
                    "is not a file; write the audio to disk before listing it in a manifest"
                )
            entry = {
                "audio_filepath": utterance.audio_path,
                "text": utterance.text,
                "duration": utterance.duration,
                "id": utterance.id,
            }
            if utterance.speaker is not None:
                entry["speaker"] = utterance.speaker
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")


def write_manifest_with_durations(utterances: Iterable[Utterance], path: str | Path, desc: str) -> list[Utterance]:
    """Reads every file's duration from its header (progress bar `desc`), writes the NeMo manifest and says
    how much it holds; unreadable files are skipped and named. Returns the utterances written."""
    kept, unreadable = [], 0
    for utterance in tqdm(list(utterances), desc=f"{desc}: reading durations", unit="file"):
        try:
            kept.append(replace(utterance, duration=audio_info(utterance.audio_path).duration))
        except AudioError as error:
            unreadable += 1
            print(f"skipped: {error}", file=sys.stderr)
    write_manifest(kept, path)
    hours = sum(u.duration for u in kept) / 3600
    print(f"{path}: {len(kept)} utterances, {hours:.1f} h ({unreadable} unreadable skipped)")
    return kept


def read_hf_dataset(
    path: str | Path, split: str | None = None, audio_column: str = "audio", text_column: str = "text"
) -> list[Utterance]:
    """A `datasets` dataset saved with `save_to_disk`, or an `audiofolder` directory.

    Audio is never decoded here: datasets>=4 decodes through torchcodec, which speechtrain does not
    use, so the audio column is cast to `Audio(decode=False)` and its `path`/`bytes` kept. Optional
    columns `id`, `duration` and `speaker`/`speaker_id` are used when present.
    """
    path = Path(path)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _read_saved_dataset(path, split, audio_column, text_column)
    if path.is_dir():
        return _read_audiofolder(path, split, text_column)
    raise FileNotFoundError(f"{HF_LAYOUT} in {path}")


def _pick_split(path: Path, split: str | None, available: list[str]) -> str:
    if split is None:
        if len(available) != 1:
            raise ConfigError(f"{path} holds splits {available}; choose one with split=")
        return available[0]
    if split not in available:
        raise ConfigError(f"{path} has no split {split!r}; it holds {available}")
    return split


def _read_saved_dataset(path: Path, split: str | None, audio_column: str, text_column: str) -> list[Utterance]:
    import datasets

    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[_pick_split(path, split, list(dataset))]
    elif split is not None:
        raise ConfigError(f"{path} is a single dataset without splits; remove split={split!r}")
    for column in (audio_column, text_column):
        if column not in dataset.column_names:
            raise DataError(f"{path}: no column {column!r}; columns are {dataset.column_names}")
    if isinstance(dataset.features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    speaker_column = next((c for c in ("speaker", "speaker_id") if c in dataset.column_names), None)
    optional = [c for c in ("id", "duration", speaker_column) if c in dataset.column_names]
    dataset = dataset.select_columns([audio_column, text_column, *optional])

    utterances = []
    rows = tqdm(dataset, desc=f"reading {path.name}", disable=len(dataset) < 10_000, unit="utt")
    for index, row in enumerate(rows):
        audio = row[audio_column]
        audio_path, audio_bytes = (audio["path"], audio["bytes"]) if isinstance(audio, dict) else (audio, None)
        if audio_bytes is None:
            if audio_path is None:
                raise DataError(f"{path}: row {index} has neither a path nor bytes in column {audio_column!r}")
            if not Path(audio_path).is_absolute():  # relative to the dataset folder, else to the current one
                audio_path = str(path / audio_path if (path / audio_path).exists() else Path(audio_path).resolve())
        speaker = row.get(speaker_column) if speaker_column else None
        utterances.append(
            Utterance(
                id=str(row["id"] if "id" in row else Path(audio_path).stem if audio_path else index),
                audio_path=audio_path or f"{path}#{index}",
                text=str(row[text_column] or ""),
                duration=None if row.get("duration") is None else float(row["duration"]),
                speaker=None if speaker is None else str(speaker),
                audio_bytes=audio_bytes,
            )
        )
    return utterances


def _metadata_rows(metadata: Path) -> Iterable[tuple[int, dict]]:
    """(line number, row) pairs of an audiofolder's metadata.csv or metadata.jsonl."""
    with metadata.open(encoding="utf-8", newline="") as lines:
        if metadata.suffix == ".csv":
            yield from enumerate(csv.DictReader(lines), 2)
            return
        for line_number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{metadata}:{line_number}: invalid JSON ({err.msg})") from err


def _read_audiofolder(path: Path, split: str | None, text_column: str) -> list[Utterance]:
    """The `audiofolder` layout read directly: datasets' builder encodes audio through torchcodec."""

    def metadata_in(folder: Path) -> Path | None:
        return next((folder / n for n in ("metadata.jsonl", "metadata.csv") if (folder / n).is_file()), None)

    split_folders = sorted(d.name for d in path.iterdir() if d.is_dir() and metadata_in(d))
    if metadata_in(path) and split is None:
        metadata = metadata_in(path)
    elif split_folders:
        metadata = metadata_in(path / _pick_split(path, split, split_folders))
    else:
        raise FileNotFoundError(f"{HF_LAYOUT} in {path}")

    utterances = []
    for line_number, row in _metadata_rows(metadata):
        for column in ("file_name", text_column):
            if column not in row:
                raise DataError(f"{metadata}:{line_number}: no column {column!r}; columns are {list(row)}")
        audio_path = metadata.parent / row["file_name"]
        speaker = row.get("speaker", row.get("speaker_id"))
        duration = row.get("duration")
        utterances.append(
            Utterance(
                id=str(row.get("id") or audio_path.stem),
                audio_path=str(audio_path),
                text=str(row[text_column] or ""),
                duration=float(duration) if duration not in (None, "") else None,
                speaker=str(speaker) if speaker not in (None, "") else None,
            )
        )
    return utterances


@dataclass
class CorpusSpec:
    """Where a corpus lives and how to read it; Hydra configs give the same fields as a dict.

    `split`, `audio_column` and `text_column` apply to `format="hf"`; `limit` keeps the first N
    utterances (quick experiments); `download_hint` is added to the error when the corpus is missing
    (recipes say there how to get their corpus). `format` is one of `FORMATS`: ljspeech,
    librispeech, libritts (a subset folder such as `LibriTTS/train-clean-100`), manifest or hf.
    """

    format: str
    path: str
    split: str | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    limit: int | None = None
    download_hint: str | None = None

    @classmethod
    def coerce(cls, spec: CorpusSpec | Mapping) -> CorpusSpec:
        """Accepts a `CorpusSpec` or a mapping (a Hydra `DictConfig` included) with its fields."""
        if isinstance(spec, CorpusSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"a corpus must be a CorpusSpec or a mapping, got {type(spec).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown or "format" not in spec or "path" not in spec:
            raise ConfigError(
                f"corpus spec {dict(spec)}: needs 'format' and 'path'"
                + (f"; unknown keys {unknown}" if unknown else "")
                + f" (allowed: {sorted(names)})"
            )
        return cls(**{key: spec[key] for key in spec})


def read_corpus(spec: CorpusSpec | Mapping) -> list[Utterance]:
    """Reads any supported corpus; relative paths are resolved against the current directory. For format `hf`, a
    Hugging Face Hub dataset id (`org/name`) that is not a local path is fetched into (or found in) the Hub cache;
    its snapshot must hold a layout `read_hf_dataset` reads (an audiofolder, or a saved dataset)."""
    spec = CorpusSpec.coerce(spec)
    if spec.format not in FORMATS:
        raise ConfigError(f"unknown corpus format {spec.format!r} for {spec.path}; expected one of {list(FORMATS)}")
    if spec.split is not None and spec.format != "hf":
        raise ConfigError(f"split={spec.split!r} only applies to format 'hf'; point path at the split ({spec.format})")
    source = resolve_pretrained(spec.path, repo_type="dataset") if spec.format == "hf" else spec.path
    path = Path(source).expanduser().resolve()
    if spec.download_hint and not path.exists():
        raise FileNotFoundError(f"{path} not found ({spec.format} corpus): {spec.download_hint}")
    if spec.format == "ljspeech":
        utterances = read_ljspeech(path)
    elif spec.format == "librispeech":
        utterances = read_librispeech(path)
    elif spec.format == "libritts":
        utterances = read_libritts(path)
    elif spec.format == "manifest":
        utterances = read_manifest(path)
    else:
        utterances = read_hf_dataset(path, spec.split, spec.audio_column, spec.text_column)
    return utterances if spec.limit is None else utterances[: spec.limit]


def read_sentences(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) of every non-blank line of a sentences file: all `id|text` lines (a third, normalised column is
    used when present, as in LJSpeech) or all plain sentences, which get the ids sentence_0001, sentence_0002, ..."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentences file {path} not found: give one sentence per line, or id|text lines")
    lines = [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    if not lines:
        raise DataError(f"sentences file {path} is empty: give one sentence per line, or id|text lines")
    with_ids = "|" in lines[0][1]
    sentences = []
    for number, line in lines:
        where = f"{path}:{number}"
        if ("|" in line) != with_ids:
            first = f"line {lines[0][0]} is {'id|text' if with_ids else 'a plain sentence'}"
            raise DataError(f"{where}: {first} but this one is not; give every line as id|text, or none")
        plain = (f"sentence_{len(sentences) + 1:04d}", line.strip())
        sentence_id, text = parse_ljspeech_line(line, where) if with_ids else plain
        if Path(sentence_id).name != sentence_id or sentence_id in (".", ".."):
            raise DataError(f"{where}: id {sentence_id!r} cannot name a file (it names the sentence's wav)")
        sentences.append((sentence_id, text))
    repeated = sorted(i for i, n in Counter(i for i, _ in sentences).items() if n > 1)
    if repeated:
        raise DataError(f"{path}: ids {repeated} are given more than once; each names its own wav")
    return sentences
