import json
import logging

import pytest
import torch

from speechtrain.data.corpora import CorpusSpec, Utterance
from speechtrain.data.spectrogram import linear_spectrogram
from speechtrain.data.tts import TtsCollator, TtsDataModule, TtsDataset
from speechtrain.models.vits.tokenizer import VitsTextTokenizer

RATE, HOP, N_FFT, SEGMENT = 16000, 64, 256, 8  # a segment is 8 * 64 = 512 samples, 32 ms


@pytest.fixture
def corpus(tmp_path, make_wav) -> list[Utterance]:
    """Three good utterances and one of every kind of bad one (speakers "ann" and "bob", and one unknown)."""
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01not a wave file" * 64)
    wav = lambda name, seconds, **kw: str(make_wav(tmp_path / f"{name}.wav", seconds, **kw))  # noqa: E731
    return [
        Utterance("good", wav("good", 0.5), " Hello there. ", speaker="ann"),
        Utterance("stereo", wav("stereo", 0.3, frequencies=(300.0, 900.0)), "Stereo!", speaker="bob"),
        Utterance("cd", wav("cd", 0.2, sample_rate=44100), "Dr. Who", speaker="ann"),
        Utterance("missing", str(tmp_path / "missing.wav"), "gone", speaker="ann"),
        Utterance("garbage", str(garbage), "garbage", speaker="ann"),
        Utterance("silent_text", wav("silent_text", 0.2), "   ", speaker="ann"),
        Utterance("digits", wav("digits", 0.2), "route 66", speaker="ann"),
        Utterance("symbols_only", wav("symbols_only", 0.2), "42 @ #", speaker="ann"),
        Utterance("short", wav("short", 0.02), "hi", speaker="ann"),
        Utterance("wordy", wav("wordy", 0.1), "far too many words", speaker="ann"),  # 37 tokens, 25 frames
        Utterance("too_long", wav("too_long", 2.5, sample_rate=8000), "long", speaker="ann"),
        Utterance("stranger", wav("stranger", 0.2), "who am I", speaker="cid"),
    ]


def make_dataset(utterances, tokenizer=None, strict=False, speaker_ids=None) -> TtsDataset:
    return TtsDataset(utterances, tokenizer or VitsTextTokenizer(strict=True), RATE, HOP, SEGMENT, max_duration=2.0,
                      strict=strict, speaker_ids={"ann": 0, "bob": 1} if speaker_ids is None else speaker_ids)


def test_bad_utterances_are_dropped_with_one_summary_warning(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="speechtrain.data.datasets"):
        dataset = make_dataset(corpus)
    assert [u.id for u in dataset.utterances] == ["good", "stereo", "cd"]
    assert dataset.skipped == {
        "missing file": 1, "unreadable audio": 1, "empty transcript": 1, "characters outside the symbol table": 2,
        "shorter than one training segment": 1, "more tokens than frames": 1, "longer than 2.0 s": 1,
        "unknown speaker": 1,
    }
    [message] = [record.getMessage() for record in caplog.records]
    assert message.startswith("dataset: skipped 9 of 12 utterances: ") and "digits.wav" in message


def test_a_lenient_tokenizer_drops_characters_and_what_is_left_decides(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="speechtrain.models.vits.tokenizer"):
        dataset = make_dataset(corpus, tokenizer=VitsTextTokenizer())
    assert "digits" in [u.id for u in dataset.utterances]  # "route " is left
    assert dataset.skipped["no symbols in the table"] == 1  # "42 @ #" leaves nothing
    assert dataset.tokenizer.dropped_characters == {"6": 2, "4": 1, "2": 1, "@": 1, "#": 1}
    assert len([r for r in caplog.records if "not in the symbol table" in r.getMessage()]) == 5


@pytest.mark.parametrize("bad_id, reason", [
    ("missing", "missing file"), ("garbage", "unreadable audio"), ("digits", "characters outside the symbol table"),
    ("short", "shorter than one training segment"), ("wordy", "more tokens than frames"),
    ("stranger", "unknown speaker"),
])
def test_strict_mode_raises_naming_the_file(corpus, bad_id, reason):
    utterance = next(u for u in corpus if u.id == bad_id)
    with pytest.raises(ValueError, match=rf"{utterance.audio_path}: {reason}"):
        make_dataset([corpus[0], utterance], strict=True)


def test_items_hold_ids_audio_and_speaker(corpus):
    tokenizer = VitsTextTokenizer()
    dataset = make_dataset(corpus[:3], tokenizer=tokenizer)
    good, stereo, cd = (dataset[i] for i in range(3))
    assert good["token_ids"] == tokenizer.encode("Hello there.") and good["text"] == "Hello there."
    assert tokenizer.decode(cd["token_ids"]) == "doctor who" and len(cd["token_ids"]) == 2 * 10 + 1
    assert good["audio"].shape == (8000,) and stereo["audio"].shape == (4800,) and cd["audio"].shape == (3200,)
    assert [good["speaker_id"], stereo["speaker_id"], cd["speaker_id"]] == [0, 1, 0]
    assert dataset.durations == pytest.approx([0.5, 0.3, 0.2])
    assert len(make_dataset(corpus[:1], speaker_ids={})) == 0  # an empty mapping knows no speaker
    no_speakers = TtsDataset(corpus[:2], tokenizer, RATE, HOP, SEGMENT, max_duration=2.0)
    assert no_speakers[1]["speaker_id"] is None


def test_audio_shorter_than_its_stated_duration_is_skipped_at_load(tmp_path, make_wav):
    path = str(make_wav(tmp_path / "a.wav", 0.02))  # 320 samples, less than a 512-sample segment
    dataset = make_dataset([Utterance("a", path, "ok", duration=0.5, speaker="ann")])
    assert len(dataset) == 1 and dataset[0] is None and dataset.skipped_at_load == 1
    strict = make_dataset([Utterance("a", path, "ok", duration=0.5, speaker="ann")], strict=True)
    with pytest.raises(ValueError, match="320 samples once loaded, fewer than the 512"):
        strict[0]


def test_collator_pads_and_computes_each_rows_spectrogram(corpus):
    tokenizer = VitsTextTokenizer()
    dataset = make_dataset(corpus[:3], tokenizer=tokenizer)
    items = [dataset[0], None, dataset[2]]
    batch = TtsCollator(N_FFT, HOP, N_FFT, pad_id=5)(items)
    lengths = [len(items[0]["token_ids"]), len(items[2]["token_ids"])]
    assert batch["input_ids"].shape == (2, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][1, lengths[1]:].eq(5).all() and batch["input_ids"][1, : lengths[1]].tolist() == \
        items[2]["token_ids"]
    assert batch["attention_mask"].sum(1).tolist() == lengths and batch["attention_mask"].dtype == torch.bool
    assert batch["waveform"].shape == (2, 1, 8000) and batch["waveform_lengths"].tolist() == [8000, 3200]
    assert torch.equal(batch["waveform"][1, 0, :3200], items[2]["audio"]) and batch["waveform"][1, 0, 3200:].eq(0).all()
    assert batch["spectrogram"].shape == (2, N_FFT // 2 + 1, 8000 // HOP)
    assert batch["spectrogram_lengths"].tolist() == [8000 // HOP, 3200 // HOP]
    assert batch["spectrogram_mask"].sum(1).tolist() == [125, 50]
    own = linear_spectrogram(items[2]["audio"][None], N_FFT, HOP, N_FFT)[0]  # not the zero-padded row's
    assert torch.equal(batch["spectrogram"][1, :, :50], own) and batch["spectrogram"][1, :, 50:].eq(0).all()
    padded_row = linear_spectrogram(batch["waveform"][1], N_FFT, HOP, N_FFT)[0, :, :50]
    assert not torch.allclose(padded_row[:, -1], own[:, -1])  # the end of the row differs with the batch's zeros
    assert batch["speaker_ids"].tolist() == [0, 0] and batch["ids"] == ["good", "cd"]
    assert batch["texts"] == ["Hello there.", "Dr. Who"] and batch["num_skipped"] == 1
    assert TtsCollator(N_FFT, HOP, N_FFT)([None, None]) is None
    without_speakers = TtsDataset(corpus[:1], tokenizer, RATE, HOP, SEGMENT, max_duration=2.0)
    assert TtsCollator(N_FFT, HOP, N_FFT)([without_speakers[0]])["speaker_ids"] is None


@pytest.fixture
def manifest(tmp_path, make_wav):
    """Twelve clips (0.2 to 0.75 s) of three speakers in a NeMo manifest, plus one too long."""
    lines = []
    for number in range(12):
        path = make_wav(tmp_path / "wavs" / f"u{number:02d}.wav", 0.2 + 0.05 * number)
        lines.append({"audio_filepath": str(path), "text": f"clip {'abcdefghijkl'[number]}", "duration": None,
                      "speaker": ["zoe", "adam", "mia"][number % 3], "id": f"u{number:02d}"})
    lines.append({"audio_filepath": str(make_wav(tmp_path / "wavs" / "long.wav", 3.0)), "text": "long",
                  "speaker": "zoe", "id": "long"})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def make_datamodule(train, **overrides) -> TtsDataModule:
    settings = dict(tokenizer=VitsTextTokenizer(), sample_rate=RATE, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT,
                    segment_frames=SEGMENT, max_batch_seconds=2.0, max_duration=1.0, seed=3)
    return TtsDataModule(train, None, **settings | overrides)


def test_datamodule_maps_speakers_and_batches_within_budget(manifest):
    module = make_datamodule({"format": "manifest", "path": str(manifest)}, val_fraction=0.25)
    module.setup("fit")
    assert module.speaker_ids == {"adam": 0, "mia": 1, "zoe": 2} and module.num_speakers == 3
    train_ids = [u.id for u in module.train_dataset.utterances]
    val_ids = [u.id for u in module.val_dataset.utterances]
    assert sorted(train_ids + val_ids) == [f"u{n:02d}" for n in range(12)] and not set(train_ids) & set(val_ids)
    durations = dict(zip(train_ids, module.train_dataset.durations))
    batches = list(module.train_dataloader())
    assert sorted(i for batch in batches for i in batch["ids"]) == sorted(train_ids)
    for batch in batches:
        assert len(batch["ids"]) * max(durations[i] for i in batch["ids"]) <= 2.0
        speakers = [["zoe", "adam", "mia"][int(i[1:]) % 3] for i in batch["ids"]]
        assert batch["speaker_ids"].tolist() == [module.speaker_ids[speaker] for speaker in speakers]
        assert batch["spectrogram"].shape[:2] == (len(batch["ids"]), N_FFT // 2 + 1)
    assert [i for b in module.val_dataloader() for i in b["ids"]] == [i for b in module.val_dataloader()
                                                                      for i in b["ids"]]


def test_given_speaker_ids_are_kept_and_other_speakers_skipped(manifest):
    module = make_datamodule(CorpusSpec("manifest", str(manifest)), speaker_ids={"mia": 7, "zoe": 2})
    module.setup("fit")
    assert module.speaker_ids == {"mia": 7, "zoe": 2} and module.num_speakers == 8
    assert module.train_dataset.skipped == {"unknown speaker": 4, "longer than 1.0 s": 1}
    dataset = module.train_dataset
    assert {dataset[i]["speaker_id"] for i in range(len(dataset))} == {7, 2}


def test_one_speaker_needs_no_speaker_ids(tmp_path, make_wav):
    root = tmp_path / "lj"
    lines = [f"a{n}|Text {letter}.|text letter {letter}." for n, letter in enumerate("abcd")]
    for n in range(4):
        make_wav(root / "wavs" / f"a{n}.wav", 0.3)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    module = make_datamodule({"format": "ljspeech", "path": str(root)})
    module.setup("fit")
    assert module.speaker_ids is None and module.num_speakers == 1 and module.val_dataloader() == []
    batch = next(iter(module.train_dataloader()))
    assert batch["speaker_ids"] is None and batch["texts"][0].startswith("text letter")  # the normalised column


def test_configuration_mistakes_are_explained(manifest):
    spec = {"format": "manifest", "path": str(manifest)}
    with pytest.raises(ValueError, match="longer than max_duration=0.01 s"):
        make_datamodule(spec, max_duration=0.01)
    with pytest.raises(ValueError, match="even difference"):
        make_datamodule(spec, hop_length=63)
    with pytest.raises(ValueError, match="cannot hold one utterance"):
        make_datamodule(spec, max_batch_seconds=0.5)
