"""End to end: the soundstorm_mini recipe on the shipped tokenized mini corpus, through train(cfg)."""

import csv
import io

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from speechtrain.hub import load_bundle
from speechtrain.train import build, train


@pytest.fixture(scope="module")
def run(compose, tmp_path_factory):
    out = tmp_path_factory.mktemp("soundstorm_mini")
    cfg = compose("recipe=soundstorm_mini", "trainer.max_epochs=12", "trainer.check_val_every_n_epoch=12",
                  "task.sample_every_n_epochs=1", "logger=[csv,tensorboard]", output_dir=out)
    return out, cfg, train(cfg)


def test_the_masked_loss_falls_and_stays_finite(run):
    out, _, metrics = run
    rows = [row for row in csv.DictReader(open(out / "csv" / "metrics.csv")) if row.get("train/loss")]
    losses = [float(row["train/loss"]) for row in rows]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(losses) >= 5
    # Overfitting 36 utterances: the masked cross-entropy at the end is well under its start (ln 1024 = 6.9).
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:2]) / 2, losses
    assert metrics["val/loss"] < losses[0]


def test_audio_samples_checkpoint_and_export(run):
    out, cfg, _ = run
    (step_dir,) = (out / "samples").iterdir()
    generated = sorted(step_dir.glob("*_generated.wav"))
    assert generated, "no generated sample written"
    info = soundfile.info(generated[0])
    assert info.samplerate == 24000 and info.frames > 24000 // 75
    (events_dir,) = {path.parent for path in (out / "tensorboard").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir), size_guidance={IMAGES: 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"val/images/{path.stem}_mel" for path in step_dir.glob("*.wav"))
    for kind in ("generated", "reference"):  # the mels of the two clips, as TensorBoard images and PNG files
        (wav,) = step_dir.glob(f"*_{kind}.wav")
        (event,) = events.Images(f"val/images/{wav.stem}_mel")
        image = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        assert image.shape == (80, soundfile.info(wav).frames // 256, 3)  # sample_logging.mel_images' defaults
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1
        assert np.array_equal(np.asarray(Image.open(step_dir / f"{wav.stem}_mel.png").convert("RGB")), image)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    model, tokenizer, feature_extractor = load_bundle(out / "exported")
    assert tokenizer is None and feature_extractor is None
    assert model.config.codebook_size == 1024 and model.config.num_quantizers == 8
    assert model.config.num_semantic_tokens == 100  # data/mini_tokens' k-means, read through ${token_info:...}
    card = (out / "exported" / "README.md").read_text()
    assert "Recipe: `soundstorm_mini`" in card and "| val/loss |" in card and "pipeline_tag: audio-to-audio" in card


def test_speechtrain_export_rebuilds_the_same_model_from_the_checkpoint(run, tmp_path):
    from speechtrain.cli.export import export_checkpoint
    from speechtrain.models.soundstorm import load_pretrained

    out, _, _ = run
    folder = export_checkpoint(out / "checkpoints" / "last.ckpt", tmp_path / "exported")
    exported, final = load_pretrained(folder), load_pretrained(out / "exported")
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), final.state_dict().values()))
    assert "Recipe: `soundstorm_mini`" in (folder / "README.md").read_text()


@pytest.mark.parametrize("crop", [[], ["data.collator.max_frames=90"]])  # the mini utterances are 1.5 to 4.5 s
def test_two_validation_passes_give_the_same_loss(compose, tmp_path, crop):
    task, datamodule = build(compose("recipe=soundstorm_mini", *crop, output_dir=tmp_path))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    first = trainer.validate(task, datamodule, verbose=False)[0]["val/loss"]
    torch.manual_seed(1)  # training moves the global generator on between two validations
    assert trainer.validate(task, datamodule, verbose=False)[0]["val/loss"] == first
