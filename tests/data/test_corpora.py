import json
from pathlib import Path

import pytest
import torch
from datasets import Audio, Dataset, DatasetDict
from omegaconf import OmegaConf

from speechtrain.data.audio import load_audio
from speechtrain.data.corpora import (
    CorpusSpec,
    Utterance,
    read_corpus,
    read_hf_dataset,
    read_librispeech,
    read_ljspeech,
    read_manifest,
    write_manifest,
)

TEXTS = {"clip_a": "the cat sat", "clip_b": "a dog ran home", "clip_c": "birds sing"}


@pytest.fixture
def clips(tmp_path, make_wav) -> dict[str, Path]:
    """Three recordings in an LJSpeech folder; the other layouts point at (or embed) the same files."""
    frequencies = {"clip_a": 300.0, "clip_b": 500.0, "clip_c": 700.0}
    return {cid: make_wav(tmp_path / "lj" / "wavs" / f"{cid}.wav", 0.2 + 0.1 * i, frequencies=(frequencies[cid],))
            for i, cid in enumerate(TEXTS)}


def write_ljspeech(root: Path) -> None:
    lines = [f"{cid}|{text.upper()}|{text}" for cid, text in TEXTS.items()]
    lines[2] = f"clip_c|{TEXTS['clip_c']}"  # no normalized column: the raw text is used
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_four_layouts_read_into_the_same_utterances(tmp_path, clips):
    write_ljspeech(tmp_path / "lj")
    manifest = tmp_path / "manifests" / "train.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(
        json.dumps({"audio_filepath": f"../lj/wavs/{cid}.wav", "text": text, "duration": 0.5}) + "\n"
        for cid, text in TEXTS.items()
    ))
    embedded = Dataset.from_dict({
        "audio": [{"path": f"{cid}.wav", "bytes": clips[cid].read_bytes()} for cid in TEXTS],
        "text": list(TEXTS.values()),
    }).cast_column("audio", Audio(decode=False))
    embedded.save_to_disk(str(tmp_path / "hf_embedded"))
    by_path = Dataset.from_dict({"audio": [str(clips[cid]) for cid in TEXTS], "text": list(TEXTS.values())})
    DatasetDict(train=by_path.cast_column("audio", Audio(sampling_rate=16000))).save_to_disk(str(tmp_path / "hf_paths"))

    corpora = {
        "ljspeech": read_corpus({"format": "ljspeech", "path": str(tmp_path / "lj")}),
        "manifest": read_corpus(CorpusSpec("manifest", str(manifest))),
        "hf embedded": read_corpus(CorpusSpec("hf", str(tmp_path / "hf_embedded"))),
        "hf by path": read_corpus(CorpusSpec("hf", str(tmp_path / "hf_paths"), split="train")),
    }
    for name, utterances in corpora.items():
        assert all(isinstance(u, Utterance) for u in utterances), name
        assert [(u.id, u.text) for u in utterances] == list(TEXTS.items()), name
        for utterance in utterances:
            source = utterance.audio_bytes if utterance.audio_bytes is not None else utterance.audio_path
            loaded = load_audio(source, 16000)
            assert torch.equal(loaded, load_audio(clips[utterance.id], 16000)), (name, utterance.id)
    assert all(u.audio_bytes is not None for u in corpora["hf embedded"])
    assert [Path(u.audio_path) for u in corpora["manifest"]] == [clips[cid].resolve() for cid in TEXTS]
    assert [u.duration for u in corpora["manifest"]] == [0.5] * 3
    assert corpora["ljspeech"][0].text == "the cat sat"  # the normalized column, not the upper-case one


def test_librispeech_folder(tmp_path, make_wav):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for speaker, chapter, texts in [("84", "121123", ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]),
                                    ("174", "50561", ["FORGOTTEN TOO"])]:
        folder = root / speaker / chapter
        lines = []
        for number, text in enumerate(texts):
            utterance_id = f"{speaker}-{chapter}-{number:04d}"
            make_wav(folder / f"{utterance_id}.flac", 0.1, subtype="PCM_16")
            lines.append(f"{utterance_id} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    utterances = read_librispeech(root)
    assert [(u.id, u.speaker, u.text) for u in utterances] == [
        ("174-50561-0000", "174", "FORGOTTEN TOO"),
        ("84-121123-0000", "84", "GO DO YOU HEAR"),
        ("84-121123-0001", "84", "BUT IN LESS THAN FIVE MINUTES"),
    ]
    assert all(Path(u.audio_path).is_file() and u.audio_path.endswith(f"{u.id}.flac") for u in utterances)
    assert read_corpus({"format": "librispeech", "path": str(root)}) == utterances


def test_audiofolder_with_splits(tmp_path, make_wav):
    for split, names in [("train", ["a", "b"]), ("test", ["c"])]:
        for name in names:
            make_wav(tmp_path / "af" / split / f"{name}.wav", 0.1)
        rows = "".join(f"{name}.wav,text {name}\n" for name in names)
        (tmp_path / "af" / split / "metadata.csv").write_text("file_name,transcription\n" + rows)
    utterances = read_hf_dataset(tmp_path / "af", split="train", text_column="transcription")
    assert [(u.id, u.text) for u in utterances] == [("a", "text a"), ("b", "text b")]
    assert Path(utterances[0].audio_path) == tmp_path / "af" / "train" / "a.wav"
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]; choose one"):
        read_hf_dataset(tmp_path / "af", text_column="transcription")
    with pytest.raises(ValueError, match="no column 'text'"):
        read_hf_dataset(tmp_path / "af", split="test")


def test_hf_dataset_errors_name_splits_and_columns(tmp_path):
    data = Dataset.from_dict({"audio": ["x.wav"], "sentence": ["hi"]})
    DatasetDict(train=data, validation=data).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"no split 'test'; it holds \['train', 'validation'\]"):
        read_hf_dataset(tmp_path / "d", split="test")
    with pytest.raises(ValueError, match=r"no column 'text'; columns are \['audio', 'sentence'\]"):
        read_hf_dataset(tmp_path / "d", split="train")
    assert read_hf_dataset(tmp_path / "d", split="validation", text_column="sentence")[0].text == "hi"


def test_hf_optional_columns_and_bytes_without_a_path(tmp_path, clips):
    Dataset.from_dict({
        "audio": [{"path": None, "bytes": clips["clip_a"].read_bytes()}],
        "text": ["the cat sat"], "id": [17], "speaker_id": [3], "duration": [0.2],
    }).cast_column("audio", Audio(decode=False)).save_to_disk(str(tmp_path / "d"))
    [utterance] = read_hf_dataset(tmp_path / "d")
    assert (utterance.id, utterance.speaker, utterance.duration) == ("17", "3", 0.2)
    assert utterance.audio_path == f"{tmp_path / 'd'}#0"
    assert torch.equal(load_audio(utterance.audio_bytes, 16000), load_audio(clips["clip_a"], 16000))


@pytest.mark.parametrize("fmt, layout", [
    ("ljspeech", "metadata.csv and wavs/ (LJSpeech layout)"),
    ("librispeech", "LibriSpeech layout"),
    ("manifest", "NeMo JSONL manifest"),
    ("hf", "save_to_disk"),
])
def test_missing_corpus_says_what_layout_was_expected(tmp_path, fmt, layout):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as caught:
        read_corpus({"format": fmt, "path": str(missing)})
    assert layout in str(caught.value) and str(missing) in str(caught.value)


def test_ljspeech_without_wavs_folder_is_a_layout_error(tmp_path):
    write_ljspeech(tmp_path)
    with pytest.raises(FileNotFoundError, match="LJSpeech layout"):
        read_ljspeech(tmp_path)


def test_malformed_manifest_lines_name_file_and_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    good = json.dumps({"audio_filepath": "a.wav", "text": "hi", "duration": 1.0})
    manifest.write_text(f"{good}\n\n{{not json\n")
    with pytest.raises(ValueError, match=rf"{manifest}:3: invalid JSON"):
        read_manifest(manifest)
    manifest.write_text(f"{good}\n" + json.dumps({"audio_filepath": "b.wav", "duration": 1.0}) + "\n")
    with pytest.raises(ValueError, match=rf"{manifest}:2: missing key 'text'"):
        read_manifest(manifest)
    manifest.write_text(json.dumps({"audio_filepath": "b.wav", "text": "x", "duration": "long"}) + "\n")
    with pytest.raises(ValueError, match=rf"{manifest}:1: duration must be a number"):
        read_manifest(manifest)


def test_manifest_round_trip_keeps_ids_and_speakers(tmp_path):
    utterances = [Utterance("u1", str(tmp_path / "a.wav"), "héllo", 1.5, "spk1"), Utterance("u2", "/abs/b.wav", "x")]
    write_manifest(utterances, tmp_path / "out" / "m.jsonl")
    assert read_manifest(tmp_path / "out" / "m.jsonl") == utterances
    with pytest.raises(ValueError, match="audio_bytes"):
        write_manifest([Utterance("u3", "in-memory.wav", "x", audio_bytes=b"RIFF")], tmp_path / "m2.jsonl")


def test_read_corpus_rejects_bad_specs_and_applies_limit(tmp_path, clips):
    write_ljspeech(tmp_path / "lj")
    with pytest.raises(ValueError, match="unknown corpus format 'kaldi'"):
        read_corpus({"format": "kaldi", "path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"unknown keys \['shuffle'\]"):
        read_corpus({"format": "ljspeech", "path": str(tmp_path), "shuffle": True})
    with pytest.raises(ValueError, match="only applies to format 'hf'"):
        read_corpus({"format": "ljspeech", "path": str(tmp_path / "lj"), "split": "train"})
    assert [u.id for u in read_corpus({"format": "ljspeech", "path": str(tmp_path / "lj"), "limit": 2})] == [
        "clip_a", "clip_b"]


def test_relative_paths_resolve_against_the_working_directory(tmp_path, clips, monkeypatch):
    write_ljspeech(tmp_path / "lj")
    monkeypatch.chdir(tmp_path)
    utterances = read_corpus(OmegaConf.create({"format": "ljspeech", "path": "lj"}))  # as Hydra passes it
    assert Path(utterances[0].audio_path).is_absolute() and Path(utterances[0].audio_path).is_file()
