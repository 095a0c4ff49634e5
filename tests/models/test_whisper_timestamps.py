"""Whisper's timestamp tokens with the real tiny.en: training sequences of a segmented manifest equal transformers'
tokenizer output, timestamp decoding gives generate(return_timestamps=True)'s tokens, long audio is transcribed by
seeking on the predicted timestamps, and segments become SRT/VTT subtitles."""

import json

import pytest
import torch

from speechtrain.cli.transcribe import Transcriber
from speechtrain.cli.transcribe import main as transcribe_main
from speechtrain.data.audio import load_audio
from speechtrain.data.collate import AsrCollator
from speechtrain.data.corpora import read_manifest
from speechtrain.data.datasets import SpeechDataset
from speechtrain.decoding import greedy_decode
from speechtrain.long_form import Segment, srt, vtt
from speechtrain.scoring import error_rates, normalize_basic
from speechtrain.train import BUNDLED_DATA_DIR

transformers = pytest.importorskip("transformers")
MINI = BUNDLED_DATA_DIR / "mini"
SEGMENTS = [{"start": 0.0, "end": 2.0, "text": " The cat sleeps by the warm window."},
            {"start": 2.3, "end": 4.8, "text": " The water is cold this morning."}]


def test_a_segmented_manifest_trains_on_transformers_timestamped_sequence(tiny_en, tmp_path):
    from speechtrain.hub import load_bundle

    _, tokenizer, features = load_bundle(tiny_en[1])
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(MINI / "wavs" / "mini_0001.wav"),
                                    "text": "The cat sleeps by the warm window. The water is cold this morning.",
                                    "segments": SEGMENTS}) + "\n")
    timed = SpeechDataset(read_manifest(manifest), 16000, tokenizer, 30.0, 448, timestamp_probability=1.0)
    plain = SpeechDataset(read_manifest(manifest), 16000, tokenizer, 30.0, 448, timestamp_probability=0.0)
    batch = AsrCollator(features, tokenizer)([timed[0], plain[0]])

    hf_tokenizer = transformers.WhisperTokenizerFast.from_pretrained(tiny_en[1], predict_timestamps=True)
    text = "".join(f"<|{s['start']:.2f}|>{s['text']}<|{s['end']:.2f}|>" for s in SEGMENTS)
    expected = hf_tokenizer(text).input_ids  # [<|startoftranscript|>, <|0.00|>, ..., <|4.80|>, <|endoftext|>]
    assert expected[1] == tokenizer.timestamp_begin
    assert batch["decoder_input_ids"][0, : len(expected) - 1].tolist() == expected[:-1]
    assert batch["labels"][0, : len(expected) - 1].tolist() == expected[1:]
    hf_plain = transformers.WhisperTokenizerFast.from_pretrained(tiny_en[1])(plain[0]["text"]).input_ids
    assert batch["decoder_input_ids"][1, : len(hf_plain) - 1].tolist() == hf_plain[:-1]  # with <|notimestamps|>


def test_timestamp_decoding_gives_transformers_generate_tokens(tiny_en):
    transcriber = Transcriber(tiny_en[1])
    tokenizer = transcriber.tokenizer
    model = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en[1]).eval()
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(tiny_en[1])
    clips = [load_audio(MINI / "wavs" / f"mini_{i:04d}.wav", 16000) for i in (1, 7)]
    clips.append(torch.cat([clips[0], torch.zeros(8000), clips[1]]))  # two sentences, two or one segments
    prefix = tokenizer.timestamp_prefix_ids
    for clip in clips:
        inputs = extractor(clip.numpy(), sampling_rate=16000, return_tensors="pt")
        theirs = model.generate(inputs.input_features, return_timestamps=True, return_dict_in_generate=True,
                                max_new_tokens=60)["sequences"][0].tolist()
        features, mask = transcriber.features([clip])
        [ours] = greedy_decode(transcriber.model, features, mask, prefix, tokenizer.eos_id, 60,
                               tokenizer.suppress_tokens, tokenizer.begin_suppress_tokens,
                               tokenizer.timestamp_rules(len(prefix)))
        generated = ours[len(prefix) :]
        assert generated[-1] == tokenizer.eos_id and generated[:-1] == theirs
        assert generated[0] >= tokenizer.timestamp_begin and generated[-2] >= tokenizer.timestamp_begin


@pytest.mark.slow  # three 30 s windows through tiny.en: 35 s on 2 CPU cores
def test_a_minute_of_speech_is_heard_once_in_order_by_seeking_on_timestamps(tiny_en):
    rows = [line.split("|") for line in (MINI / "metadata.csv").read_text().splitlines()]
    pieces, references = [], []
    for row in rows:
        pieces += [load_audio(MINI / "wavs" / f"{row[0]}.wav", 16000), torch.zeros(4000)]
        references.append(row[2])
        if sum(len(piece) for piece in pieces) >= 60 * 16000:
            break
    segments = Transcriber(tiny_en[1]).transcribe_segments(torch.cat(pieces))
    hypothesis, reference = " ".join(s.text for s in segments), " ".join(references)
    assert len(normalize_basic(hypothesis).split()) == len(normalize_basic(reference).split())  # nothing twice
    assert error_rates([reference], [hypothesis])["wer"] < 0.03
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))  # in order
    assert segments[-1].end > 58


def test_segments_become_srt_and_vtt(tmp_path):
    segments = [Segment(0.0, 2.0, "One."), Segment(61.5, 3725.125, "Two.")]
    assert srt(segments) == "1\n00:00:00,000 --> 00:00:02,000\nOne.\n\n2\n00:01:01,500 --> 01:02:05,125\nTwo.\n\n"
    assert vtt(segments) == "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nOne.\n\n00:01:01.500 --> 01:02:05.125\nTwo.\n\n"


def test_the_command_writes_subtitles(tiny_en, tmp_path, capsys):
    clip = MINI / "wavs" / "mini_0001.wav"
    with pytest.raises(SystemExit) as exit_status:
        transcribe_main([str(tiny_en[1]), str(clip), "--timestamps", "--srt", str(tmp_path)])
    assert exit_status.value.code == 0
    assert "[0.00 --> 2.00]\tthe cat sleeps by the warm window." in capsys.readouterr().out
    assert (tmp_path / "mini_0001.srt").read_text() == "1\n00:00:00,000 --> 00:00:02,000\nthe cat sleeps by the " \
                                                        "warm window.\n\n"


def test_evaluate_with_timestamps_records_segments_and_writes_subtitles(tiny_en, tmp_path):
    from speechtrain.cli.evaluate import main as evaluate_main

    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    (corpus / "metadata.csv").write_text("mini_0001|The cat sleeps by the warm window.\n")
    (corpus / "wavs" / "mini_0001.wav").write_bytes((MINI / "wavs" / "mini_0001.wav").read_bytes())
    with pytest.raises(SystemExit) as exit_status:
        evaluate_main([str(tiny_en[1]), "--data-format", "ljspeech", "--data-path", str(corpus), "--timestamps",
                       "--out", str(tmp_path / "eval")])
    assert exit_status.value.code == 0
    [row] = [json.loads(line) for line in (tmp_path / "eval" / "utterances.jsonl").read_text().splitlines()]
    assert row["segments"] == [{"start": 0.0, "end": 2.0, "text": "the cat sleeps by the warm window."}]
    assert row["wer"] == 0.0
    assert (tmp_path / "eval" / "subtitles" / "mini_0001.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000")
