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


@pytest.mark.slow  # 40 GAN steps of vits_mini: about a minute on one thread
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


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that records the total gradient norm it steps with (after any clipping and unscaling)."""

    def __init__(self, params, lr: float = 1e-4):
        super().__init__(params, lr=lr)
        self.norms: list[float] = []

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))
        return super().step(closure)


def fit_recording(task, batch, tmp_path, steps: int, clip: float | None, **trainer_options):
    """`steps` updates of both networks on one batch, with SGD optimisers that record what they step with;
    returns the optimisers and the metrics logged each step (CSV logger, every step)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    task.generator_optimizer = task.discriminator_optimizer = RecordingSGD
    task.gradient_clip_val = clip
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, log_every_n_steps=1,
                        logger=CSVLogger(tmp_path, name="log"), **trainer_options)
    trainer.fit(task, train_dataloaders=DataLoader([batch] * steps, batch_size=None, collate_fn=lambda b: b))
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/grad_norm_g")]
    return trainer.optimizers, rows


def test_gradient_norms_reach_the_logger_and_clipping_under_16_mixed_acts_on_unscaled_gradients(compose, tmp_path):
    """Under 16-mixed the gradients carry the loss scale (here 2**6) until the precision plugin unscales them
    inside optimizer.step(); a clip before that shrank the true gradients by the scale too. The clip (20) lies
    between the tiny discriminator's gradient norm and the generator's, so one is clipped and one is not."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    L.seed_everything(0)
    task, datamodule = build(compose("recipe=vits_mini", "data.max_batch_seconds=2.5", "data.max_duration=2.5",
                                     "task.segment_size=8", output_dir=tmp_path))  # one utterance a batch
    datamodule.setup("fit")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6, growth_interval=1000)
    (generator, discriminator), rows = fit_recording(
        task, next(iter(datamodule.train_dataloader())), tmp_path, steps=2, clip=20.0,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    logged_g, logged_d = ([float(row[key]) for row in rows] for key in ("train/grad_norm_g", "train/grad_norm_d"))
    print(f"logged before the clip: generator {logged_g}, discriminator {logged_d}; stepped with: generator "
          f"{generator.norms}, discriminator {discriminator.norms}")
    assert len(rows) == 2 and len(generator.norms) == len(discriminator.norms) == 2  # no step skipped for inf
    assert all(norm > 20.0 for norm in logged_g) and all(0 < norm < 20.0 for norm in logged_d)
    assert generator.norms == pytest.approx([20.0, 20.0], rel=1e-3)  # clipped to the threshold, in true units
    assert discriminator.norms == pytest.approx(logged_d, rel=1e-5)  # not clipped: the logged norm is the one used


def test_without_matplotlib_a_validation_logs_the_audio_and_says_once_what_it_skips(vits, tmp_path, monkeypatch,
                                                                                     caplog):
    import sys

    from speechtrain import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(plots, "_skipped", set())
    task, datamodule = vits
    task.validation_sentences, task.num_logged_utterances = [], 1
    batch = next(iter(datamodule.val_dataloader()))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    with caplog.at_level("WARNING", logger="speechtrain.plots"):
        for _ in range(2):
            trainer.validate(task, dataloaders=DataLoader([batch], batch_size=None, collate_fn=lambda b: b))
    (step_dir,) = (tmp_path / "samples").iterdir()
    drawn = batch["ids"][: task.num_logged_utterances]
    assert sorted(p.name for p in step_dir.iterdir()) == sorted(
        f"{utterance}_{kind}.wav" for utterance in drawn for kind in ("reference", "generated"))
    assert [r.getMessage() for r in caplog.records if r.name == "speechtrain.plots"] == [
        "matplotlib is not installed: skipping VITS's alignment, mel and duration images "
        "(pip install 'speechtrain[plots]')"]
