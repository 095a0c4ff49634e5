"""The ASR task's own behaviour, on the real default recipe's pieces (tiny Whisper, mini corpus)."""

import lightning as L
import pytest
import torch

from speechtrain.tasks.guards import NonFiniteLossError
from speechtrain.train import build


@pytest.fixture
def pieces(compose, tmp_path):
    L.seed_everything(0)
    task, datamodule = build(compose("recipe=whisper_mini", output_dir=tmp_path))
    datamodule.setup("fit")
    return task, datamodule


def fit_steps(task, datamodule, steps: int) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(task, datamodule=datamodule)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_frozen_encoder_stays_put_while_the_decoder_learns(compose, tmp_path):
    L.seed_everything(0)
    task, datamodule = build(compose("recipe=whisper_mini", "task.freeze_encoder=true", output_dir=tmp_path))
    encoder, decoder = snapshot(task.model.get_encoder()), snapshot(task.model.model.decoder)
    fit_steps(task, datamodule, 3)
    assert all(torch.equal(p, encoder[n]) for n, p in task.model.get_encoder().named_parameters())
    assert any(not torch.equal(p, decoder[n]) for n, p in task.model.model.decoder.named_parameters())


def test_spec_augment_masks_training_batches_only(pieces):
    task, datamodule = pieces
    seen = []

    class Recorder:
        enabled = True

        def __call__(self, features, frame_mask):
            seen.append(features.shape)
            return torch.zeros_like(features)

    task.spec_augment = Recorder()
    batch = next(iter(datamodule.train_dataloader()))
    task.train()
    masked_loss = task.model_step(batch)
    task.eval()
    with torch.no_grad():
        clean_loss = task.model_step(batch)
    assert len(seen) == 1 and seen[0] == batch["input_features"].shape
    assert masked_loss.item() != pytest.approx(clean_loss.item())


def test_empty_and_non_finite_batches_are_skipped_then_the_run_stops(pieces, caplog):
    task, datamodule = pieces
    batch = next(iter(datamodule.train_dataloader()))
    assert task.training_step(None, 0) is None and task.skipped_batches == 1

    task.model_step = lambda batch: torch.tensor(float("nan"))
    task.nonfinite.max_consecutive = 3
    assert task.training_step(batch, 1) is None and task.training_step(batch, 2) is None
    assert "loss is nan" in caplog.text and batch["ids"][0] in caplog.text
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        task.training_step(batch, 3)


def test_warmup_then_linear_decay_to_zero_at_the_last_step(pieces):
    task, datamodule = pieces
    lrs = []

    class RecordLearningRate(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    trainer = L.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False, callbacks=[RecordLearningRate()])
    trainer.fit(task, datamodule=datamodule)  # recipe: 20 warm-up steps to a peak of 3e-3
    peak = 3e-3
    assert [lr[0] for lr in lrs[:3]] == pytest.approx([peak / 20, 2 * peak / 20, 3 * peak / 20])
    assert lrs[19][0] == pytest.approx(peak)
    assert lrs[25][0] == pytest.approx(peak * (1 - (25 - 20) / (30 - 20)))
    assert all(a == b for a, b in lrs)  # both parameter groups follow the schedule
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[1]["weight_decay"] == 0.0 and optimizer.param_groups[0]["weight_decay"] > 0
