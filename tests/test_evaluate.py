"""`speechtrain-evaluate` on the bundled mini corpus: transcripts equal transformers' `generate` on a
transformers-saved folder, bad items are skipped and counted, a tokenizer of another model is refused. The
default run's validation WER is compared with the evaluation of its export in tests/test_train.py (that test
trains it anyway). A synthesiser's evaluation writes its wavs and the same result files, the same for the same seed;
the real Whisper tiny.en hears the mini recordings as their transcripts; MCD is 0 for a recording against itself."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtrain.cli.evaluate import evaluate_asr, load_transcriber, main, read_sentences, score_recordings
from speechtrain.data.audio import load_audio
from speechtrain.data.corpora import CorpusSpec, read_corpus
from speechtrain.errors import CheckpointError, DataError
from speechtrain.hub import save_bundle
from speechtrain.train import BUNDLED_DATA_DIR, CONFIG_DIR, build

transformers = pytest.importorskip("transformers")
MINI = BUNDLED_DATA_DIR / "mini"


def untrained_export(folder: Path, recipe: str, *overrides: str) -> Path:
    """A recipe's untrained model, tokenizer (trained on its corpus) and features saved as a folder, as an export."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"recipe={recipe}", *overrides, f"paths.output_dir={folder}"])
    torch.manual_seed(0)
    task, _ = build(cfg)
    save_bundle(folder, task.model, task.tokenizer, getattr(task, "feature_extractor", None))
    return folder


@pytest.fixture(scope="module")
def mini_bundle(tmp_path_factory) -> Path:
    """The default recipe's untrained Whisper (12 tokens at most), its tokenizer and features."""
    return untrained_export(tmp_path_factory.mktemp("bundle"), "whisper_mini", "model.config.max_target_positions=12")


@pytest.fixture(scope="module")
def vits_bundle(tmp_path_factory) -> Path:
    """vits_mini's untrained VITS (22.05 kHz) and its character tokenizer."""
    return untrained_export(tmp_path_factory.mktemp("vits"), "vits_mini")


def test_bad_items_are_skipped_and_counted_and_every_line_is_written(mini_bundle, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(MINI, corpus)
    lines = (corpus / "metadata.csv").read_text().splitlines()[:3]
    sf.write(corpus / "wavs" / "empty_text.wav", np.zeros(8000, dtype=np.float32), 16000)
    lines += ["missing|A file that is not there.|A file that is not there.", "empty_text|...|..."]
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(mini_bundle), "--data-format", "ljspeech", "--data-path", str(corpus), "--out", str(tmp_path / "e"),
              "--batch-size", "2"])
    assert exit_info.value.code == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["utterances"] == 3 and results["skipped"] == 2
    assert results["skipped_by_reason"] == {"unreadable audio": 1, "empty reference after normalisation": 1}
    assert results["normalizer"] == "basic" and results["model_type"] == "whisper"
    assert results["decoding"]["beams"] == 1 and results["corpus"]["format"] == "ljspeech"
    rows = [json.loads(line) for line in (tmp_path / "e" / "utterances.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["mini_0001", "mini_0002", "mini_0003", "missing", "empty_text"]
    assert "missing.wav" in rows[3]["skipped"] and rows[4]["skipped"] == "empty reference after normalisation"
    scored = rows[:3]
    assert sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in scored) == pytest.approx(
        results["wer"] * results["words"])


def test_a_tokenizer_of_another_model_is_refused(mini_bundle, tmp_path):
    from speechtrain.models.whisper.tokenizer import train_whisper_tokenizer_on_corpus

    folder = tmp_path / "mixed"
    shutil.copytree(mini_bundle, folder)
    # the tokenizer files of a model with a larger vocabulary, over the 320-token model's
    train_whisper_tokenizer_on_corpus({"format": "ljspeech", "path": str(MINI)}, vocab_size=400).save_pretrained(folder)
    with pytest.raises(CheckpointError, match="tokenizer has 400 tokens but the model's vocab_size is 320"):
        load_transcriber(folder)


@pytest.fixture(scope="module")
def transformers_folder(mini_bundle, tmp_path_factory) -> Path:
    """A random Whisper saved by transformers (weights at std 1 so that tokens vary), with our tokenizer files, a
    Whisper generation_config.json (the prompt's token ids, as real Whisper folders carry) and transformers' own
    feature extractor config."""
    ours = json.loads((mini_bundle / "config.json").read_text())
    config = transformers.WhisperConfig(**{**ours, "init_std": 1.0})
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    for name in Path(mini_bundle).iterdir():
        if name.name.startswith(("tokenizer", "vocab", "merges", "special", "added", "generation_config")):
            shutil.copy(name, folder)
    transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=3).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("beams", [1, 4])
def test_transcripts_equal_transformers_generate_on_a_transformers_folder(transformers_folder, tmp_path, beams):
    from transformers.generation.utils import GenerationMixin

    transcriber = load_transcriber(transformers_folder, num_beams=beams)
    utterances = read_corpus(CorpusSpec(format="ljspeech", path=str(MINI), limit=6))
    evaluate_asr(transcriber, utterances, tmp_path, batch_size=3)
    ours = [json.loads(line)["hypothesis"] for line in (tmp_path / "utterances.jsonl").read_text().splitlines()]

    hf = transformers.WhisperForConditionalGeneration.from_pretrained(transformers_folder).eval()
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(transformers_folder)
    tokenizer = transcriber.tokenizer
    prefix = list(tokenizer.prefix_ids)
    waveforms = [load_audio(u.audio_path, 16000).numpy() for u in utterances]
    features = extractor(waveforms, sampling_rate=16000, return_tensors="pt").input_features
    out = GenerationMixin.generate(
        hf, input_features=features, decoder_input_ids=torch.tensor([prefix] * len(waveforms)),
        max_new_tokens=hf.config.max_target_positions - len(prefix), do_sample=False, num_beams=beams,
        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
        suppress_tokens=list(tokenizer.suppress_tokens) or None,
        begin_suppress_tokens=list(tokenizer.begin_suppress_tokens) or None,
    )
    expected = []
    for row in out.tolist():
        generated = row[len(prefix):]
        generated = generated[: generated.index(tokenizer.eos_id) + 1] if tokenizer.eos_id in generated else generated
        expected.append(tokenizer.decode(generated).strip())
    assert len(set(expected)) > 1, "a random model should give different transcripts"
    assert ours == expected


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "utterances.jsonl").read_text().splitlines()]


def _evaluate_synthesis(model: Path, asr_model: Path, sentences: Path, out: Path, *options: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([str(model), "--sentences", str(sentences), "--asr-model", str(asr_model), "--out", str(out),
              "--batch-size", "2", *options])
    assert exit_info.value.code == 0
    return json.loads((out / "results.json").read_text())


TIMINGS = ("seconds", "utterances_per_second")


def test_a_synthesiser_is_evaluated_into_wavs_and_results_the_same_for_the_same_seed(vits_bundle, mini_bundle,
                                                                                     tmp_path):
    sentences = tmp_path / "sentences.txt"
    texts = ["The cat sleeps by the warm window.", "Please open the door for the dog.", "We have three red apples."]
    sentences.write_text(f"{texts[0]}\n\n{texts[1]}\n  \n{texts[2]}\n")  # blank lines are no sentences
    first, again, other = (_evaluate_synthesis(vits_bundle, mini_bundle, sentences, tmp_path / name, "--seed", seed)
                           for name, seed in (("first", "3"), ("again", "3"), ("other", "4")))
    ids = ["sentence_0001", "sentence_0002", "sentence_0003"]
    wavs = {name: [(tmp_path / name / "wavs" / f"{i}.wav").read_bytes() for i in ids]
            for name in ("first", "again", "other")}
    audio, rate = sf.read(tmp_path / "first" / "wavs" / f"{ids[0]}.wav")
    assert rate == 22050 and len(audio) > 0
    assert wavs["first"] == wavs["again"] and all(a != b for a, b in zip(wavs["first"], wavs["other"]))

    assert first["utterances"] == 3 and first["skipped"] == 0 and first["normalizer"] == "basic"
    assert {"wer", "cer", "substitutions", "deletions", "insertions", "char_substitutions", "speechtrain_version"} \
        <= first.keys()
    assert (first["model"], first["model_type"]) == (str(vits_bundle), "vits")
    assert (first["asr_model"], first["asr_model_type"]) == (str(mini_bundle), "whisper")
    assert first["synthesis"]["seed"] == 3 and first["decoding"]["beams"] == 1 and "mcd" not in first
    rows = _rows(tmp_path / "first")
    assert [row["id"] for row in rows] == ids and [row["reference"] for row in rows] == texts
    assert rows[0]["audio"] == str(tmp_path / "first" / "wavs" / f"{ids[0]}.wav")

    def same_run(results: dict) -> dict:
        return {**{k: v for k, v in results.items() if k not in TIMINGS}, "synthesis": {
            k: v for k, v in results["synthesis"].items() if k != "seconds"}}

    assert same_run(first) == same_run(again)
    assert [{k: v for k, v in row.items() if k != "audio"} for row in rows] == \
        [{k: v for k, v in row.items() if k != "audio"} for row in _rows(tmp_path / "again")]


@pytest.mark.slow  # 40 windows of 30 s through the real model: 20 s on 2 CPU cores
def test_real_tiny_en_hears_the_mini_recordings_as_their_transcripts(tiny_en, tmp_path):
    """The recordings scored as if they were synthesised: what a perfect synthesiser would get (CER 2.5 %, WER 4.9 %:
    "nine" heard as "9", "garden" as "guard in")."""
    utterances = read_corpus(CorpusSpec(format="ljspeech", path=str(MINI)))
    results = score_recordings(load_transcriber(tiny_en[1]), [u.id for u in utterances],
                               [u.audio_path for u in utterances], [u.text for u in utterances], tmp_path,
                               batch_size=8)
    assert results["utterances"] == len(utterances) == 40 and results["skipped"] == 0
    assert results["cer"] < 0.05, f"CER {results['cer']:.3f}, WER {results['wer']:.3f}"


def test_mcd_is_zero_for_a_recording_against_itself_and_not_against_another(mini_bundle, tmp_path):
    utterances = read_corpus(CorpusSpec(format="ljspeech", path=str(MINI), limit=4))
    ids, texts = [u.id for u in utterances], [u.text for u in utterances]
    waveforms = [load_audio(u.audio_path, 22050) for u in utterances]  # scored as waveforms in memory
    transcriber = load_transcriber(mini_bundle)
    itself = score_recordings(transcriber, ids, waveforms, texts, tmp_path / "itself", sample_rate=22050,
                              references={u.id: u for u in utterances})
    others = {u.id: other for u, other in zip(utterances, utterances[1:] + utterances[:1])}
    another = score_recordings(transcriber, ids, waveforms, texts, tmp_path / "another", sample_rate=22050,
                               references=others)
    assert itself["mcd"] == 0.0 and itself["mcd_utterances"] == 4 and itself["mcd_skipped"] == 0
    assert all(row["mcd"] == 0.0 for row in _rows(tmp_path / "itself"))
    assert another["mcd_utterances"] == 4 and all(row["mcd"] > 10 for row in _rows(tmp_path / "another"))


def test_references_add_mcd_to_a_synthesiser_evaluation_and_count_sentences_without_one(vits_bundle, mini_bundle,
                                                                                        tmp_path):
    sentences = tmp_path / "metadata.csv"
    sentences.write_text("mini_0001|The cat sleeps by the warm window.\nnew_0001|A sentence nobody recorded.\n"
                         "mini_0002|Please open the door for the dog.\n")
    results = _evaluate_synthesis(vits_bundle, mini_bundle, sentences, tmp_path / "e", "--references", str(MINI))
    assert results["mcd"] > 0 and results["mcd_utterances"] == 2
    assert results["mcd_skipped"] == 1 and results["mcd_skipped_by_reason"] == {"no reference": 1}
    assert results["references"] == {"format": "ljspeech", "path": str(MINI)}
    rows = {row["id"]: row for row in _rows(tmp_path / "e")}
    assert rows["new_0001"]["mcd_skipped"] == "no reference" and "mcd" not in rows["new_0001"]
    assert rows["mini_0002"]["reference_audio"].endswith("mini_0002.wav") and rows["mini_0002"]["mcd"] > 0
    assert results["mcd"] == pytest.approx((rows["mini_0001"]["mcd"] + rows["mini_0002"]["mcd"]) / 2)


@pytest.mark.parametrize("content", [None, "", "\n  \n"], ids=["missing", "empty", "blank"])
def test_a_sentences_file_that_is_missing_or_empty_is_a_clear_error(tmp_path, capsys, content):
    sentences = tmp_path / "sentences.txt"
    if content is not None:
        sentences.write_text(content)
    with pytest.raises(SystemExit) as exit_info:  # read before any model: these folders do not exist
        main([str(tmp_path / "no_tts"), "--sentences", str(sentences), "--asr-model", str(tmp_path / "no_asr")])
    assert exit_info.value.code == 1
    expected = "not found" if content is None else "is empty"
    assert f"sentences file {sentences} {expected}: give one sentence per line, or id|text lines" in \
        capsys.readouterr().err


def test_sentences_files_take_ids_on_every_line_or_on_none(tmp_path):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a|Hello there.|Hello there.\nb|Two.\n")
    assert read_sentences(sentences) == [("a", "Hello there."), ("b", "Two.")]
    sentences.write_text("a|Hello there.\nTwo.\n")
    with pytest.raises(DataError, match=r"sentences.txt:2: line 1 is id\|text but this one is not"):
        read_sentences(sentences)
    sentences.write_text("a|Hello.\na|Again.\n")
    with pytest.raises(DataError, match=r"ids \['a'\] are given more than once"):
        read_sentences(sentences)
    sentences.write_text("../x|Hello.\n")
    with pytest.raises(DataError, match="cannot name a file"):
        read_sentences(sentences)


def test_a_model_of_the_other_kind_is_refused(mini_bundle, vits_bundle, tmp_path, capsys):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("Hello there.\n")
    with pytest.raises(SystemExit):
        main([str(mini_bundle), "--sentences", str(sentences), "--asr-model", str(vits_bundle)])
    assert "a whisper model (automatic-speech-recognition), where a text-to-speech model is needed" in \
        capsys.readouterr().err
