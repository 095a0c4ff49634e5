"""Throughput from the batch protocol (samples, label tokens, audio seconds) and the progress bar's learning rate."""

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Checkpoint
from torch.utils.data import DataLoader

from speechtrain.callbacks import SpeechProgressBar, ThroughputMonitor, batch_counts
from speechtrain.data.collate import AsrCollator
from speechtrain.data.tts import TtsCollator


class FakeClock:
    """Time that stands still until a training step moves it (0.5 s per batch)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ClockedModule(L.LightningModule):
    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        self.clock.now += 0.5
        loss = self.layer(batch["x"]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.25)


def batches():
    """Three batches of 4 samples, 10 label tokens (the rest padding) and 6 s of audio each."""
    labels = torch.full((4, 5), -100)
    labels[:, :2] = 7
    labels[0, 2:4] = 8
    return [{"x": torch.randn(4, 2), "ids": ["a", "b", "c", "d"], "labels": labels, "audio_seconds": 6.0}] * 3


def test_throughput_is_counts_over_wall_time_and_joins_the_progress_bar(tmp_path):
    clock = FakeClock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[ThroughputMonitor(window=2, clock=clock),
                                                               SpeechProgressBar()],
                        default_root_dir=tmp_path)
    trainer.fit(ClockedModule(clock), DataLoader(batches(), batch_size=None))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["throughput/samples_per_s"] == pytest.approx(4 / 0.5)
    assert metrics["throughput/tokens_per_s"] == pytest.approx(10 / 0.5)
    assert metrics["throughput/audio_s_per_s"] == pytest.approx(6 / 0.5)
    bar = trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)
    assert "throughput/audio_s_per_s" in bar and "throughput/samples_per_s" not in bar  # the headline only
    assert bar["lr"] == "2.50e-01" and "train/loss" in bar and "v_num" not in bar


def test_batch_counts_follow_the_protocol_and_name_a_bad_batch():
    assert batch_counts({"input_ids": torch.zeros(3, 7)}) == {"samples": 3.0}
    assert batch_counts(batches()[0]) == {"samples": 4.0, "tokens": 10.0, "audio_seconds": 6.0}
    with pytest.raises(ValueError, match="texts"):
        batch_counts({"texts": ["a"]})
    with pytest.raises(ValueError, match="window=0"):
        ThroughputMonitor(window=0)


def test_collators_report_the_unpadded_audio_seconds(fake_tokenizer):
    class Features:  # the feature extractor interface: only the sampling rate matters here
        sampling_rate = 16000

        def __call__(self, waveforms):
            return torch.zeros(len(waveforms), 2, 3), torch.ones(len(waveforms), 3, dtype=torch.bool)

    items = [{"id": "a", "audio": torch.zeros(16000), "text": "ab", "token_ids": [10, 11]},
             {"id": "b", "audio": torch.zeros(8000), "text": "c", "token_ids": [12]}]
    assert AsrCollator(Features(), fake_tokenizer)([items[0], None, items[1]])["audio_seconds"] == 1.5

    tts_items = [{"id": "a", "text": "ab", "token_ids": [1, 2], "audio": torch.zeros(2205), "speaker_id": None},
                 {"id": "b", "text": "c", "token_ids": [3], "audio": torch.zeros(4410), "speaker_id": None}]
    assert TtsCollator(64, 16, 64, sample_rate=22050)(tts_items)["audio_seconds"] == pytest.approx(0.3)
    assert "audio_seconds" not in TtsCollator(64, 16, 64)(tts_items)


def test_each_rank_draws_its_own_spec_augment_masks_and_a_rerun_draws_them_again():
    """`RankSeed.setup` seeds `seed + rank`: SpecAugment (NumPy) and dropout (torch) masks differ between ranks 0 and
    1 and repeat when a rank is seeded again."""
    from types import SimpleNamespace

    from speechtrain.callbacks import RankSeed
    from speechtrain.layers.specaugment import SpecAugment

    spec_augment = SpecAugment(mask_time_prob=0.3, mask_time_length=3, mask_feature_prob=0.3, mask_feature_length=2)
    features = torch.ones(4, 16, 60)

    def masks_of_rank(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        RankSeed(1234).setup(SimpleNamespace(global_rank=rank), None, "fit")
        return spec_augment(features) == 0, torch.nn.functional.dropout(features, 0.5) == 0

    rank0, rank1 = masks_of_rank(0), masks_of_rank(1)
    assert rank0[0].any() and not torch.equal(rank0[0], rank1[0]) and not torch.equal(rank0[1], rank1[1])
    assert all(torch.equal(a, b) for a, b in zip(masks_of_rank(0), rank0, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(masks_of_rank(1), rank1, strict=True))


class WorseningModule(L.LightningModule):
    """Its val/loss grows every epoch, so no epoch after the first is a new best."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EpochRecordingSampler(torch.utils.data.SequentialSampler):
    """Records the epoch (from Lightning's `set_epoch`) of every pass that hands out items."""

    def __init__(self, length: int) -> None:
        super().__init__(range(length))
        self.epoch, self.epochs_drawn = 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.epochs_drawn.append(self.epoch)
        yield from super().__iter__()


def test_last_checkpoint_is_the_last_epoch_even_when_validation_got_worse(compose, tmp_path):
    """The default callbacks' last.ckpt is the newest state (Lightning 2.6's save_last alone keeps the best's)."""
    cfg = compose("recipe=whisper_mini", output_dir=tmp_path)

    def checkpoint_callbacks() -> list[Checkpoint]:
        built = (hydra.utils.instantiate(node) for node in cfg.callbacks.values())
        return [callback for callback in built if isinstance(callback, Checkpoint)]

    data = DataLoader(torch.ones(4, 2), batch_size=2)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=checkpoint_callbacks())
    trainer.fit(WorseningModule(), train_dataloaders=data, val_dataloaders=data)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == trainer.global_step == 6

    # Resumed, it trains exactly one epoch more, with that epoch's sampler order (iteration-based, as most recipes):
    # from a checkpoint written in `on_train_epoch_end`, Lightning 2.6 counts the finished epoch twice.
    sampler = EpochRecordingSampler(4)
    resumed = L.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=checkpoint_callbacks())
    resumed.fit(WorseningModule(), train_dataloaders=DataLoader(torch.ones(4, 2), batch_size=2, sampler=sampler),
                val_dataloaders=data, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert resumed.global_step == 8 and sampler.epochs_drawn == [3]
