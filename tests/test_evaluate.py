"""`speechtrain-evaluate` on the bundled mini corpus: transcripts equal transformers' `generate` on a
transformers-saved folder, bad items are skipped and counted, a tokenizer of another model is refused. The
default run's validation WER is compared with the evaluation of its export in tests/test_train.py (that test
trains it anyway)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtrain.cli.evaluate import evaluate_asr, load_transcriber, main
from speechtrain.data.audio import load_audio
from speechtrain.data.corpora import CorpusSpec, read_corpus
from speechtrain.errors import CheckpointError
from speechtrain.hub import save_bundle
from speechtrain.train import BUNDLED_DATA_DIR, CONFIG_DIR, build

transformers = pytest.importorskip("transformers")
MINI = BUNDLED_DATA_DIR / "mini"


@pytest.fixture(scope="module")
def mini_bundle(tmp_path_factory) -> Path:
    """The default recipe's untrained model, tokenizer (trained on the corpus) and features as a folder."""
    from hydra import compose, initialize_config_dir

    folder = tmp_path_factory.mktemp("bundle")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["recipe=whisper_mini", "model.config.max_target_positions=12",
                                                      f"paths.output_dir={folder}"])
    torch.manual_seed(0)
    task, _ = build(cfg)
    save_bundle(folder, task.model, task.tokenizer, task.feature_extractor)
    return folder


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
