"""VITS end to end: recipe run, samples, checkpoint, export into transformers, synthesize, fine-tune."""

from pathlib import Path

import pytest
import soundfile
import torch

from speechtrain.cli.synthesize import main as synthesize_main
from speechtrain.cli.synthesize import synthesize
from speechtrain.hub import load_bundle
from speechtrain.safe_load import load_checkpoint
from speechtrain.train import train

REPO_DIR = Path(__file__).resolve().parents[1]  # the checkout: train.py and recipes/

SHORT = ["data.max_batch_seconds=6", "data.max_duration=5", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1"]


@pytest.fixture(scope="module")
def run_dir(compose, tmp_path_factory):
    out = tmp_path_factory.mktemp("vits_mini")
    metrics = train(compose("recipe=vits_mini", *SHORT, "logger=tensorboard", output_dir=out))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()) and "val/mel_l1" in metrics
    return out


def test_recipe_writes_samples_and_a_full_gan_checkpoint(run_dir):
    samples = sorted((run_dir / "samples").glob("*/sentence_*.wav"))
    assert [s.name for s in samples] == ["sentence_0.wav", "sentence_1.wav"]
    drawn = sorted(p.name.removesuffix("_alignment.png") for p in (run_dir / "samples").glob("*/*_alignment.png"))
    others = {p.name for p in (run_dir / "samples").glob("*/*")} - {s.name for s in samples}
    assert len(drawn) == 2 and others == {f"{u}_{kind}" for u in drawn for kind in (
        "reference.wav", "generated.wav", "alignment.png", "reference_mel.png", "generated_mel.png", "durations.png")}
    audio, rate = soundfile.read(samples[0])
    assert rate == 22050 and len(audio) > 0 and abs(audio).max() > 0
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert any(k.startswith("discriminator.") for k in checkpoint["state_dict"])  # resumable GAN state
    assert len(checkpoint["optimizer_states"]) == 2 and len(checkpoint["lr_schedulers"]) == 2


def test_export_loads_in_transformers_with_the_same_speech(run_dir):
    transformers = pytest.importorskip("transformers")
    ours, tokenizer, _ = load_bundle(run_dir / "exported")
    theirs = transformers.VitsModel.from_pretrained(run_dir / "exported").eval()
    hf_tokenizer = transformers.VitsTokenizer.from_pretrained(run_dir / "exported")
    text = "the cat sleeps by the warm window"
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text).input_ids == ids
    theirs.noise_scale = theirs.noise_scale_duration = 0.0
    with torch.no_grad():
        ours_wave, _ = ours.eval()(torch.tensor([ids]), noise_scale=0.0, noise_scale_duration=0.0)
        theirs_wave = theirs(input_ids=torch.tensor([ids])).waveform
    assert ours_wave.shape == theirs_wave.shape
    assert (ours_wave - theirs_wave).abs().max() < 1e-4


def test_synthesize_is_seeded_and_follows_the_speaking_rate(run_dir, tmp_path, capsys):
    text = ["Where did you put the blue book?"]
    first, rate = synthesize(run_dir / "exported", text, seed=3)
    again, _ = synthesize(run_dir / "exported", text, seed=3)
    slow, _ = synthesize(run_dir / "exported", text, speaking_rate=0.5, noise_scale_duration=0.0)
    normal, _ = synthesize(run_dir / "exported", text, speaking_rate=1.0, noise_scale_duration=0.0)
    assert rate == 22050 and torch.equal(first[0], again[0])
    assert len(slow[0]) == pytest.approx(2 * len(normal[0]), rel=0.1)

    synthesize_main([str(run_dir / "exported"), "one", "two", "-o", str(tmp_path / "x.wav")])
    assert (tmp_path / "x.wav").is_file() and (tmp_path / "x_1.wav").is_file()
    assert "x_1.wav" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        synthesize_main([str(run_dir / "exported"), "你好", "-o", str(tmp_path / "y.wav")])


def test_finetune_recipe_starts_from_the_exported_folder(run_dir, compose, tmp_path):
    from safetensors.torch import load_file

    cfg = compose("recipe=vits_finetune", f"model.pretrained={run_dir / 'exported'}", *SHORT,
                  "task.discriminator.channel_divisor=16", output_dir=tmp_path)
    assert cfg.audio.sample_rate == 22050 and cfg.audio.n_fft == 1024  # read from config.json
    train(cfg)
    before = load_file(run_dir / "exported" / "model.safetensors")
    after = load_file(tmp_path / "exported" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "exported" / "vocab.json").read_text() == (run_dir / "exported" / "vocab.json").read_text()


def test_ljspeech_recipe_without_the_corpus_says_how_to_get_it(tmp_path):
    import subprocess
    import sys


    result = subprocess.run([sys.executable, str(REPO_DIR / "train.py"), "recipe=vits_ljspeech", "trainer=default",
                             f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path}/LJSpeech-1.1" in result.stderr and "recipes/ljspeech/prepare.py" in result.stderr


def test_ljspeech_recipe_reads_espeak_phonemes_as_the_original(compose, tmp_path):
    """configs/ljs_base.json trains on english_cleaners2: lower case, abbreviations, then phonemizer's espeak
    en-us with stress and punctuation, whitespace collapsed, blanks interspersed."""
    cfg = compose("recipe=vits_ljspeech", output_dir=tmp_path)
    assert (cfg.tokenizer.phonemize, cfg.tokenizer.phonemizer_language, cfg.tokenizer.cleaners,
            cfg.tokenizer.add_blank) == (True, "en-us", "english", True)
    phonemizer = pytest.importorskip("phonemizer")
    from phonemizer.backend import EspeakBackend

    if not EspeakBackend.is_available():
        pytest.skip("needs espeak-ng (apt-get install espeak-ng)")
    from hydra.utils import instantiate

    tokenizer = instantiate(cfg.tokenizer)
    text = "Dr. Smith said, in the only sense with which we are at present concerned: printing differs!"
    original = phonemizer.phonemize("doctor smith said, in the only sense with which we are at present concerned: "
                                    "printing differs!", language="en-us", backend="espeak", strip=True,
                                    preserve_punctuation=True, with_stress=True)
    original = " ".join(original.split())  # collapse_whitespace
    assert tokenizer.text_to_symbols(text) == original and tokenizer.dropped_characters == {}
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == original and ids[0::2] == [0] * (len(original) + 1)
