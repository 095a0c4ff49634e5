"""End to end: compose the real recipe config, train on the mini corpus, export, load in transformers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from speechtrain.safe_load import load_checkpoint
from speechtrain.train import BUNDLED_DATA_DIR, train

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py and recipes/

FAST = ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "logger=csv", "trainer.log_every_n_steps=1"]


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_DIR / "train.py"), *overrides, f"hydra.run.dir={cwd}/run"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def test_default_recipe_trains_checkpoints_and_exports(compose, tmp_path):
    cfg = compose("recipe=whisper_mini", *FAST, output_dir=tmp_path)
    metrics = train(cfg)
    assert {"train/loss", "val/loss", "val/wer", "val/cer"} <= metrics.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    saved = (tmp_path / "checkpoints" / "config.yaml").read_text()
    assert "${" not in saved and str(BUNDLED_DATA_DIR / "mini") in saved  # resolved interpolations
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "preprocessor_config.json"):
        assert (tmp_path / "exported" / name).is_file(), name


def test_exported_checkpoint_loads_in_transformers_with_same_logits(train_and_export):
    out, (ours, tokenizer, features), (theirs, hf_tokenizer, hf_features), state = train_and_export(
        "whisper_mini", *FAST, transformers_classes=("WhisperForConditionalGeneration", "WhisperTokenizerFast",
                                                     "WhisperFeatureExtractor"))
    assert "whisper" in (out / "README.md").read_text()

    waveforms = [torch.randn(16000) * 0.1, torch.randn(24000) * 0.1]
    input_features, frame_mask = features(waveforms)
    reference = hf_features([w.numpy() for w in waveforms], sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(input_features, reference.input_features, atol=1e-4, rtol=0)

    text_ids = tokenizer.encode("the cat sleeps by the warm window")
    assert hf_tokenizer.encode("the cat sleeps by the warm window", add_special_tokens=False) == text_ids
    decoder_input_ids = torch.tensor([list(tokenizer.prefix_ids) + text_ids] * 2)
    with torch.no_grad():
        expected = theirs(input_features=input_features, decoder_input_ids=decoder_input_ids).logits
        actual = ours(input_features, frame_mask, decoder_input_ids, None)
    difference = (actual - expected).abs().max().item()
    assert difference < 1e-4, difference
    # the checkpoint's weights, not a fresh initialisation
    torch.testing.assert_close(theirs.model.decoder.embed_tokens.weight,
                               state["model.model.decoder.embed_tokens.weight"])


def test_resume_from_last_continues_the_run(compose, tmp_path):
    train(compose("recipe=whisper_mini", *FAST, "trainer.max_epochs=1", output_dir=tmp_path))
    first = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    train(compose("recipe=whisper_mini", *FAST, "trainer.max_epochs=2", "ckpt_path=last", output_dir=tmp_path))
    second = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == 2 * first["global_step"]


def test_missing_data_folder_is_one_clear_paragraph(tmp_path):
    result = run_cli("data.train.path=/no/such/corpus", "data.val.path=/no/such/corpus", cwd=tmp_path)
    assert result.returncode == 1
    assert "/no/such/corpus" in result.stderr and "metadata.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_and_bad_value_are_named(tmp_path):
    unknown = run_cli("trainer.max_epoch=3", cwd=tmp_path)
    assert unknown.returncode != 0 and "max_epoch" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = run_cli("task.lr_decay=exponential", cwd=tmp_path)
    assert bad.returncode == 1 and "exponential" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("recipe=whisper_finetune", "model.pretrained=/no/such/model", cwd=tmp_path)
    assert missing.returncode == 1 and "/no/such/model" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_tiny_whisper_overfits_the_mini_corpus(compose, tmp_path):
    """The default recipe's own settings, stopped at the first validation below CER 0.05 (it starts near 1.0). Its
    export,
    evaluated on the same (validation) corpus with the same normaliser, scores the last validation's WER and CER."""
    from speechtrain.cli.evaluate import main as evaluate

    stop_once_there = ["+callbacks.reached._target_=lightning.pytorch.callbacks.EarlyStopping",
                       "+callbacks.reached.monitor=val/cer", "+callbacks.reached.stopping_threshold=0.05",
                       "+callbacks.reached.patience=1000", "+callbacks.reached.check_on_train_epoch_end=false"]
    metrics = train(compose("recipe=whisper_mini", "logger=csv", "task.log_cross_attention=true", *stop_once_there,
                            output_dir=tmp_path))
    assert metrics["val/cer"] < 0.05, metrics
    *_, last = sorted((tmp_path / "samples").iterdir())  # a CSV run has its pictures as PNG files
    (picture,) = last.glob("*_cross_attention.png")
    assert len(set(Image.open(picture).convert("RGB").getdata())) > 1
    corpus = BUNDLED_DATA_DIR / "mini"
    with pytest.raises(SystemExit):
        evaluate([str(tmp_path / "exported"), "--data-format", "ljspeech", "--data-path", str(corpus),
                  "--normalizer", "basic", "--out", str(tmp_path / "evaluation")])
    results = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    utterances = len((corpus / "metadata.csv").read_text().splitlines())
    assert results["utterances"] == utterances and results["skipped"] == 0
    assert results["wer"] == pytest.approx(metrics["val/wer"], abs=1e-6)
    assert results["cer"] == pytest.approx(metrics["val/cer"], abs=1e-6)


def test_transcribe_command_prints_one_line_per_file_and_names_bad_ones(compose, tmp_path, capsys):
    from speechtrain.cli.transcribe import main as transcribe

    train(compose("recipe=whisper_mini", *FAST, "trainer.max_epochs=1", output_dir=tmp_path))
    wav = BUNDLED_DATA_DIR / "mini" / "wavs" / "mini_0001.wav"
    with pytest.raises(SystemExit) as exit_info:
        transcribe([str(tmp_path / "exported"), str(wav), str(tmp_path / "missing.wav"), "--beams", "2"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1  # one file failed
    assert out.startswith(f"{wav}\t") and len(out.strip().splitlines()) == 1
    assert "missing.wav" in err


def make_corpus_with_bad_items(root: Path) -> Path:
    """The mini corpus plus one of each kind of bad item; the stereo 44.1 kHz one is fine."""
    import shutil

    import numpy as np
    import soundfile as sf

    corpus = root / "corpus"
    shutil.copytree(BUNDLED_DATA_DIR / "mini", corpus)
    lines = (corpus / "metadata.csv").read_text().splitlines()[:12]
    (corpus / "wavs" / "garbage.wav").write_bytes(b"this is not audio" * 100)
    sf.write(corpus / "wavs" / "long.wav", np.zeros(22050 * 4, dtype=np.float32), 22050)  # > 3 s window
    stereo, rate = sf.read(corpus / "wavs" / "mini_0001.wav")
    stereo = np.stack([stereo, stereo], axis=1)
    sf.write(corpus / "wavs" / "stereo.wav", np.repeat(stereo, 2, axis=0), 44100)
    lines += [
        "missing|A file that is not there.|A file that is not there.",
        "garbage|Bytes that are not audio.|Bytes that are not audio.",
        "mini_0002| | ",
        "long|Far too long for the window.|Far too long for the window.",
        "mini_0003|" + "word " * 200 + "|" + "word " * 200,
        "stereo|The cat sleeps by the warm window.|The cat sleeps by the warm window.",
    ]
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    return corpus


def test_training_skips_and_counts_bad_items_or_stops_when_strict(compose, tmp_path, caplog):
    corpus = make_corpus_with_bad_items(tmp_path)
    data = [f"data.train.path={corpus}", f"data.val.path={corpus}"]
    with caplog.at_level("WARNING"):
        metrics = train(compose("recipe=whisper_mini", *FAST, *data, output_dir=tmp_path / "lenient"))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    summary = " ".join(r.getMessage() for r in caplog.records if "skipped 5 of 18" in r.getMessage())
    for expected in ("missing.wav", "garbage.wav", "long.wav", "mini_0002", "mini_0003"):
        assert expected in summary, (expected, summary)

    with pytest.raises(Exception, match="missing.wav|garbage.wav|mini_0002|long.wav|mini_0003"):
        train(compose("recipe=whisper_mini", *FAST, *data, "data.strict=true", output_dir=tmp_path / "strict"))


def test_finetune_recipe_starts_from_a_hugging_face_folder(finetune_from_export):
    """Train briefly, export, then fine-tune from the export with the whisper_finetune recipe."""
    data = [f"data.train.path={BUNDLED_DATA_DIR / 'mini'}", "data.max_duration=3.0", "data.max_batch_seconds=40"]
    cfg, _ = finetune_from_export("whisper_mini", "whisper_finetune", *data, *FAST[1:], base_overrides=FAST,
                                  moved_weight="model.decoder.embed_tokens.weight",
                                  kept_files=("tokenizer.json", "generation_config.json", "preprocessor_config.json"))
    assert cfg.data.max_label_tokens == 96  # read from the folder's config.json


def test_training_without_any_logger_runs_with_the_default_callbacks(compose, tmp_path):
    """logger=none keeps every other default callback; the learning-rate monitor, which needs a logger, is left out."""
    metrics = train(compose("recipe=whisper_mini", "logger=none", "trainer.max_steps=2", "export=false",
                            output_dir=tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.parametrize("cuda", [True, False])
def test_float32_matmul_precision_is_set_on_cuda_only(monkeypatch, cuda):
    from speechtrain.errors import ConfigError
    from speechtrain.train import _set_float32_matmul_precision

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    _set_float32_matmul_precision("high")
    _set_float32_matmul_precision(None)
    assert calls == (["high"] if cuda else [])  # the CPU keeps full fp32 whatever the setting
    with pytest.raises(ConfigError, match="float32_matmul_precision='tf32'"):
        _set_float32_matmul_precision("tf32")


@pytest.mark.gpu
def test_training_on_cuda_turns_on_tf32(compose, tmp_path):
    torch.set_float32_matmul_precision("highest")
    train(compose("recipe=whisper_mini", "trainer.max_steps=1", "export=false",  # set by train() whatever the device
                  "logger=none", "~callbacks.learning_rate_monitor", output_dir=tmp_path))
    assert torch.get_float32_matmul_precision() == "high"


def test_a_test_split_is_scored_after_training_and_goes_into_the_model_card(compose, tmp_path):
    from huggingface_hub import ModelCard

    test_corpus = f"+data.test={{format: ljspeech, path: {BUNDLED_DATA_DIR / 'mini'}, limit: 6}}"
    metrics = train(compose("recipe=whisper_mini", *FAST, test_corpus.replace("+data", "data"), output_dir=tmp_path))
    assert {"test/wer", "test/cer", "test/loss"} <= metrics.keys()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/wer"] == metrics["test/wer"]
    card = ModelCard.load(tmp_path / "exported" / "README.md")
    results = {result.metric_type: result for result in card.data.eval_results}
    assert results["wer"].metric_value == pytest.approx(metrics["test/wer"])
    assert results["cer"].dataset_name == "mini" and results["wer"].task_type == "automatic-speech-recognition"
    assert card.data.model_name == "whisper_mini" and card.data.datasets == ["mini"]
