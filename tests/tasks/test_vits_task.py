"""VITS GAN training on the mini corpus: the real recipe's pieces, a few steps on the CPU."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from speechtrain.train import build, train


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> float:
    """Fraction of parameter tensors that moved."""
    moved = [not torch.equal(p, before[n]) for n, p in module.named_parameters()]
    return sum(moved) / len(moved)


@pytest.fixture
def vits(compose, tmp_path):
    L.seed_everything(0)
    task, datamodule = build(compose("recipe=vits_mini", "data.max_batch_seconds=6", "data.max_duration=5",
                                     "task.generator_optimizer.lr=2e-3", output_dir=tmp_path))
    datamodule.setup("fit")
    return task, datamodule


def test_a_few_steps_update_both_networks_with_finite_losses_and_the_mel_loss_falls(vits, tmp_path):
    task, datamodule = vits
    batch = next(iter(datamodule.train_dataloader()))
    generator, discriminator = snapshot(task.model), snapshot(task.discriminator)
    mel = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            metrics = trainer.callback_metrics
            assert all(torch.isfinite(metrics[k]) for k in ("train/loss_g", "train/loss_d", "train/kl",
                                                             "train/duration", "train/feature_matching"))
            mel.append(float(metrics["train/mel"]))

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                        default_root_dir=tmp_path)
    # the same batch again and again: a short overfit
    trainer.fit(task, train_dataloaders=DataLoader([batch] * 40, batch_size=None, collate_fn=lambda b: b))
    assert len(mel) == 40 and task.nonfinite.skipped == 0
    assert changed(task.model, generator) > 0.5 and changed(task.discriminator, discriminator) > 0.9
    assert sum(mel[-5:]) / 5 < 0.8 * sum(mel[:5]) / 5, mel


def test_recipe_runs_end_to_end_with_samples_checkpoint_and_transformers_loadable_export(compose, tmp_path):
    transformers = pytest.importorskip("transformers")
    metrics = train(compose("recipe=vits_mini", "data.max_batch_seconds=6", "data.max_duration=5",
                            "trainer.max_epochs=1",
                            "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                            "trainer.check_val_every_n_epoch=1", "logger=tensorboard",
                            output_dir=tmp_path))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()) and "val/mel_l1" in metrics
    samples = sorted((tmp_path / "samples").glob("*/*.wav"))
    assert [s.name for s in samples] == ["sentence_0.wav", "sentence_1.wav"]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("discriminator.") for k in checkpoint["state_dict"])  # full GAN state for resuming
    assert len(checkpoint["optimizer_states"]) == 2

    from speechtrain.hub import load_bundle

    ours_model, tokenizer, _ = load_bundle(tmp_path / "exported")
    theirs = transformers.VitsModel.from_pretrained(tmp_path / "exported").eval()
    hf_tokenizer = transformers.VitsTokenizer.from_pretrained(tmp_path / "exported")
    text = "the cat sleeps by the warm window"
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text).input_ids == ids
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        ours_wave, _ = ours_model.eval()(input_ids, noise_scale=0.0, noise_scale_duration=0.0)
        theirs.noise_scale = theirs.noise_scale_duration = 0.0
        theirs_wave = theirs(input_ids=input_ids).waveform
    assert ours_wave.shape == theirs_wave.shape
    assert (ours_wave - theirs_wave).abs().max() < 1e-4
