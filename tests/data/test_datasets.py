import logging

import pytest
import soundfile as sf
import torch

from speechtrain.data import datasets as datasets_module
from speechtrain.data.audio import AudioError
from speechtrain.data.collate import AsrCollator
from speechtrain.data.corpora import Utterance
from speechtrain.data.datasets import SpeechDataset
from speechtrain.models.whisper.features import WhisperFeatureExtractor

MAX_LABELS = 24  # 4 prefix tokens + up to 19 characters + end token


@pytest.fixture
def corpus(tmp_path, make_wav) -> list[Utterance]:
    """Three good utterances (mono, stereo, 44.1 kHz) and one of every kind of bad one."""
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01not a wave file" * 64)
    return [
        Utterance("mono", str(make_wav(tmp_path / "mono.wav", 0.5)), " hello there "),
        Utterance("stereo", str(make_wav(tmp_path / "stereo.wav", 0.3, frequencies=(300.0, 900.0))), "stereo"),
        Utterance("cd", str(make_wav(tmp_path / "cd.wav", 0.4, sample_rate=44100, frequencies=(1000.0,))), "cd"),
        Utterance("missing", str(tmp_path / "missing.wav"), "gone"),
        Utterance("garbage", str(garbage), "garbage"),
        Utterance("silent_text", str(make_wav(tmp_path / "silent_text.wav", 0.2)), "   "),
        Utterance("too_long", str(make_wav(tmp_path / "too_long.wav", 31.0, sample_rate=8000)), "long audio"),
        Utterance("wordy", str(make_wav(tmp_path / "wordy.wav", 0.2)), "a transcript far too long"),
    ]


def make_dataset(utterances, tokenizer, strict=False) -> SpeechDataset:
    return SpeechDataset(utterances, 16000, tokenizer, max_duration=30.0, max_label_tokens=MAX_LABELS, strict=strict)


def test_bad_utterances_are_dropped_with_one_summary_warning(corpus, fake_tokenizer, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="speechtrain.data.datasets"):
        dataset = make_dataset(corpus, fake_tokenizer)
    assert [u.id for u in dataset.utterances] == ["mono", "stereo", "cd"]
    assert dataset.durations == pytest.approx([0.5, 0.3, 0.4])
    assert dataset.skipped == {
        "missing file": 1, "unreadable audio": 1, "empty transcript": 1, "longer than 30.0 s": 1,
        "more than 24 label tokens": 1,
    }
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith("dataset: skipped 5 of 8 utterances: ")
    for fragment in [f"missing file: 1 (e.g. {tmp_path / 'missing.wav'}: file not found)",
                     f"unreadable audio: 1 (e.g. {tmp_path / 'garbage.wav'}: cannot decode audio",
                     "empty transcript: 1 (e.g.", f"longer than 30.0 s: 1 (e.g. {tmp_path / 'too_long.wav'}: 31.00 s)",
                     f"more than 24 label tokens: 1 (e.g. {tmp_path / 'wordy.wav'}: 30 tokens)"]:
        assert fragment in message


@pytest.mark.parametrize("bad_id, reason", [("missing", "missing file"), ("garbage", "unreadable audio"),
                                            ("silent_text", "empty transcript"), ("too_long", "longer than 30.0 s"),
                                            ("wordy", "more than 24 label tokens")])
def test_strict_mode_raises_naming_the_file(corpus, fake_tokenizer, bad_id, reason):
    utterances = [u for u in corpus if u.id in ("mono", bad_id)]
    with pytest.raises(ValueError) as caught:
        make_dataset(utterances, fake_tokenizer, strict=True)
    bad_path = next(u.audio_path for u in corpus if u.id == bad_id)
    assert str(caught.value).startswith(f"{bad_path}: {reason}")


def test_items_are_mono_resampled_and_tokenized(corpus, fake_tokenizer):
    dataset = make_dataset(corpus, fake_tokenizer)
    mono, stereo, cd = (dataset[i] for i in range(3))
    assert set(mono) == {"id", "audio", "text", "token_ids", "prefix_ids", "prompt_ids"}
    assert mono["text"] == "hello there" and mono["token_ids"] == fake_tokenizer.encode("hello there")
    assert mono["audio"].shape == (8000,) and mono["audio"].dtype == torch.float32
    channels, _ = sf.read(corpus[1].audio_path, dtype="float32")
    torch.testing.assert_close(stereo["audio"], torch.from_numpy(channels.mean(axis=1)))
    assert cd["audio"].shape == (6400,)
    spectrum = torch.fft.rfft(cd["audio"]).abs()
    assert float(spectrum.argmax()) * 16000 / 6400 == pytest.approx(1000.0, abs=2.5)


def test_stated_durations_skip_the_header_read_but_are_checked(tmp_path, fake_tokenizer, make_wav):
    path = str(make_wav(tmp_path / "a.wav", 0.5))
    dataset = make_dataset([Utterance("a", path, "ok", duration=12.0), Utterance("b", path, "ok", duration=40.0)],
                           fake_tokenizer)
    assert dataset.durations == [12.0] and dataset.skipped == {"longer than 30.0 s": 1}


def test_progress_bar_for_large_corpora(tmp_path, fake_tokenizer, make_wav, monkeypatch, capsys):
    monkeypatch.setattr(datasets_module, "PROGRESS_MIN_ITEMS", 3)
    path = str(make_wav(tmp_path / "a.wav", 0.1))
    make_dataset([Utterance(str(i), path, "ok") for i in range(3)], fake_tokenizer)
    assert "checking dataset" in capsys.readouterr().err


def test_file_corrupted_after_the_check_is_skipped_and_collated_away(corpus, fake_tokenizer, caplog):
    dataset = make_dataset(corpus, fake_tokenizer)
    with open(dataset.utterances[1].audio_path, "wb") as corrupted:
        corrupted.write(b"overwritten")
    with caplog.at_level(logging.WARNING, logger="speechtrain.data.datasets"):
        items = [dataset[i] for i in range(3)]
    assert items[1] is None and dataset.skipped_at_load == 1
    assert dataset.utterances[1].audio_path in caplog.text
    batch = AsrCollator(WhisperFeatureExtractor(chunk_length=1), fake_tokenizer)(items)
    assert batch["ids"] == ["mono", "cd"] and batch["num_skipped"] == 1
    assert batch["input_features"].shape[0] == 2
    assert AsrCollator(WhisperFeatureExtractor(chunk_length=1), fake_tokenizer)([None, None]) is None

    strict = make_dataset(corpus[:1], fake_tokenizer, strict=True)
    with open(strict.utterances[0].audio_path, "wb") as corrupted:
        corrupted.write(b"")
    with pytest.raises(AudioError, match="mono.wav"):
        strict[0]


def test_audio_longer_than_its_stated_duration_is_skipped_at_load(tmp_path, fake_tokenizer, make_wav):
    path = str(make_wav(tmp_path / "a.wav", 2.0))
    dataset = SpeechDataset([Utterance("a", path, "ok", duration=0.5)], 16000, fake_tokenizer, 1.0, MAX_LABELS)
    assert dataset[0] is None and dataset.skipped_at_load == 1


def test_collator_builds_the_design_batch(fake_tokenizer):
    extractor = WhisperFeatureExtractor(chunk_length=1)
    items = [{"id": "a", "audio": torch.randn(1600), "text": "ab", "token_ids": [10, 11]},
             {"id": "b", "audio": torch.randn(800), "text": "c", "token_ids": [12]}]
    batch = AsrCollator(extractor, fake_tokenizer)(items)
    pad, eos = fake_tokenizer.pad_id, fake_tokenizer.eos_id
    assert batch["decoder_input_ids"].tolist() == [[3, 4, 5, 6, 10, 11], [3, 4, 5, 6, 12, pad]]
    assert batch["labels"].tolist() == [[4, 5, 6, 10, 11, eos], [4, 5, 6, 12, eos, -100]]
    assert batch["decoder_attention_mask"].tolist() == [[True] * 6, [True] * 5 + [False]]
    assert batch["input_features"].shape == (2, 80, 100)
    assert batch["attention_mask"].sum(1).tolist() == [10, 5]
    assert batch["texts"] == ["ab", "c"] and batch["ids"] == ["a", "b"] and batch["num_skipped"] == 0
    expected_features, _ = extractor([items[1]["audio"]])
    torch.testing.assert_close(batch["input_features"][1], expected_features[0])
