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
    loss = task.training_step(None, 0)
    assert task.skipped_batches == 1
    loss.backward()  # a zero loss that reaches every parameter, so that DDP's all-reduce runs as on any step
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert loss.item() == 0 and all(p.grad is not None and not p.grad.any() for p in trainable)

    task.model_step = lambda batch: torch.tensor(float("nan"))
    task.nonfinite.max_consecutive = 3
    assert task.training_step(batch, 1).item() == 0 and task.training_step(batch, 2).item() == 0
    assert task.skipped_batches == 3 and task.nonfinite.skipped == 2
    assert "loss is nan" in caplog.text and batch["ids"][0] in caplog.text
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        task.training_step(batch, 3)


def test_a_skipped_step_changes_nothing_and_the_epoch_counts_reach_the_logger(pieces, tmp_path):
    """The loss is NaN at the second batch: weights and AdamW's state (moments, step count) stay as they were, though
    weight decay alone would move the weights; the epoch's skipped steps and dropped items reach the CSV logger."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    task, datamodule = pieces
    around_skip = {}

    class SpoilOneStep(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            batch["num_skipped"] = 2  # as if the collator had dropped two items of every batch
            if batch_idx == 1:
                around_skip["before"] = snapshot(module), optimizer_state(trainer)
                finite_loss = module.model_step
                module.model_step = lambda batch: finite_loss(batch) * float("nan")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:
                del module.model_step
                around_skip["after"] = snapshot(module), optimizer_state(trainer)

    def optimizer_state(trainer) -> dict[str, torch.Tensor]:
        states = trainer.optimizers[0].state.values()
        return {f"{i}.{key}": value.clone() for i, state in enumerate(states) for key, value in state.items()}

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[SpoilOneStep()])
    trainer.fit(task, datamodule=datamodule)
    batches = trainer.num_training_batches
    assert batches >= 3
    (weights_before, state_before), (weights_after, state_after) = around_skip["before"], around_skip["after"]
    assert state_before and state_before.keys() == state_after.keys()
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    assert all(torch.equal(weights_before[k], weights_after[k]) for k in weights_before)
    with open(next(tmp_path.glob("csv/*/metrics.csv"))) as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/skipped_batches")]
    assert len(rows) == 1
    assert {key: float(rows[0][key]) for key in ("train/skipped_batches", "train/nonfinite_steps",
                                                  "train/skipped_items")} == {
        "train/skipped_batches": 1.0, "train/nonfinite_steps": 1.0, "train/skipped_items": 2.0 * batches}


def test_an_open_ended_run_refuses_a_decay_over_its_length_and_keeps_a_length_free_one(pieces):
    """max_steps=-1 and max_epochs=-1: linear decay over an invented 10 x warm-up would leave the learning rate at 0
    for the rest of the run; it is refused, and inverse_sqrt still gives a positive rate far beyond."""
    from speechtrain.errors import ConfigError

    task, _ = pieces
    task.trainer = L.Trainer(max_steps=-1, max_epochs=-1, accelerator="cpu", logger=False,
                             enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"task.lr_decay=linear .*trainer.max_steps=-1.*inverse_sqrt"):
        task.configure_optimizers()
    task.lr_decay = "inverse_sqrt"
    scheduler = task.configure_optimizers()["lr_scheduler"]["scheduler"]
    for _ in range(20 * task.warmup_steps):
        scheduler.optimizer.step()
        scheduler.step()
    peak = scheduler.base_lrs[0]
    assert scheduler.get_last_lr()[0] == pytest.approx(peak * (task.warmup_steps / (20 * task.warmup_steps + 1)) ** 0.5)


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


def test_log_cross_attention_draws_the_first_validation_utterance_over_its_audio(pieces, tmp_path):
    import math

    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    task, datamodule = pieces
    task.log_cross_attention, task.max_new_tokens = True, 4
    batch = next(iter(datamodule.val_dataloader()))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.validate(task, dataloaders=DataLoader([batch], batch_size=None, collate_fn=lambda b: b))
    (png,) = (tmp_path / "samples").rglob("*.png")
    assert png.name == f"{batch['ids'][0]}_cross_attention.png"
    image = np.asarray(Image.open(png).convert("RGB"))
    tokens, frames = int(batch["decoder_attention_mask"][0].sum()), int(batch["attention_mask"][0].sum())
    assert image.shape == (tokens, math.ceil(frames / 2), 3)  # Whisper's encoder halves the frames; no padding
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1


def test_log_cross_attention_needs_a_model_that_has_the_weights():
    from speechtrain.tasks.asr import Seq2SeqASRTask

    with pytest.raises(ValueError, match="task.log_cross_attention=true: Linear has no cross_attention_weights"):
        Seq2SeqASRTask(torch.nn.Linear(1, 1), None, None, optimizer=None, log_cross_attention=True)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("recipe", ["whisper_mini", "s2t_mini"])
def test_validation_encodes_each_batch_once_and_scores_as_the_twice_encoding_path(compose, tmp_path, recipe,
                                                                                   num_beams):
    """The loss and the decoding share one encoder pass per batch; loss, token ids, hypotheses and WER/CER are those
    of the old path (the forward for the loss, then a decoding that encodes by itself). Speech2Text subsamples the
    frame mask, Whisper ignores it: both must reach the decoder as in the forward."""
    from functools import partial

    from torch.utils.data import DataLoader

    from speechtrain.decoding import beam_search, decode_to_text, greedy_decode
    from speechtrain.scoring import error_counts

    L.seed_everything(0)
    task, datamodule = build(compose(f"recipe={recipe}", f"task.num_beams={num_beams}", "task.max_new_tokens=6",
                                     output_dir=tmp_path))
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    if recipe == "s2t_mini":
        assert not batch["attention_mask"].all(), "padded frames should be masked, or the mask proves nothing"
    task.num_logged_predictions = len(batch["ids"])
    encoder_passes = []
    hook = task.model.get_encoder().register_forward_hook(lambda module, args, output: encoder_passes.append(1))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    try:
        [metrics] = trainer.validate(task, dataloaders=DataLoader([batch, batch], batch_size=None,
                                                                  collate_fn=lambda b: b))
    finally:
        hook.remove()
    assert len(encoder_passes) == 2  # two batches

    model, tokenizer = task.model.eval(), task.tokenizer
    features, frame_mask = batch["input_features"], batch["attention_mask"]
    with torch.no_grad():
        states = model.encode(features, frame_mask)
        loss = task.model_step(batch)
        assert torch.equal(task.model_step(batch, states), loss)
        search = greedy_decode if num_beams == 1 else partial(beam_search, num_beams=num_beams)
        options = dict(prefix_ids=tokenizer.prefix_ids, eos_id=tokenizer.eos_id, max_new_tokens=6,
                       suppress_tokens=getattr(tokenizer, "suppress_tokens", ()),
                       begin_suppress_tokens=getattr(tokenizer, "begin_suppress_tokens", ()))
        assert search(model, features, frame_mask, encoder_hidden_states=states, **options) == search(
            model, features, frame_mask, **options)
        hypotheses = decode_to_text(model, tokenizer, features, frame_mask, num_beams, 6)
    assert [hypothesis for _, _, hypothesis in task._val_samples] == hypotheses
    counts = error_counts(batch["texts"], hypotheses, task.normalizer)
    assert metrics["val/loss"] == pytest.approx(loss.item())
    assert metrics["val/wer"] == pytest.approx(counts.wer) and metrics["val/cer"] == pytest.approx(counts.cer)
