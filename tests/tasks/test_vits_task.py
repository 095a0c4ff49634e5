"""VITS GAN training on the mini corpus: the real recipe's pieces, a few steps on the CPU."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from speechtrain.train import build


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
    assert len(mel) == 40 and all(guard.skipped == 0 for guard in task.nonfinite.values())
    assert changed(task.model, generator) > 0.5 and changed(task.discriminator, discriminator) > 0.9
    assert sum(mel[-5:]) / 5 < 0.8 * sum(mel[:5]) / 5, mel


def test_a_multi_speaker_corpus_needs_a_multi_speaker_model(vits):
    from types import SimpleNamespace

    task, datamodule = vits
    datamodule.speaker_ids = {"anna": 0, "ben": 1, "carl": 2}
    task.trainer = SimpleNamespace(datamodule=datamodule)
    with pytest.raises(ValueError, match="3 speakers but model.config.num_speakers=1"):
        task.setup("fit")
