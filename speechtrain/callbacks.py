"""Lightning callbacks every recipe shares: per-rank seeding, training throughput, a progress bar that shows the
learning rate, and validation that leaves training's random numbers alone.

Throughput is read from the batch itself, so any task works whose collator follows this protocol
(`AsrCollator` and `TtsCollator` do):
    ids:           list[str], one per sample (else the first dimension of the first tensor counts samples)
    labels:        optional int64 [B, L], target tokens; -100 marks padding. Gives tokens per second.
    audio_seconds: optional float, seconds of unpadded audio in the batch. Gives audio seconds per second
                   (the real-time factor of training).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from speechtrain.layers.labels import IGNORE_INDEX


def batch_counts(batch: dict[str, Any]) -> dict[str, float]:
    """`{"samples": n, "tokens": n, "audio_seconds": s}` of a batch, each key only where the batch has it."""
    if "ids" in batch:
        samples = len(batch["ids"])
    else:
        tensor = next((value for value in batch.values() if torch.is_tensor(value) and value.ndim > 0), None)
        if tensor is None:
            raise ValueError(f"cannot count samples in a batch with keys {sorted(batch)}: no `ids` and no tensor")
        samples = tensor.shape[0]
    counts = {"samples": float(samples)}
    if torch.is_tensor(batch.get("labels")):
        counts["tokens"] = float((batch["labels"] != IGNORE_INDEX).sum())
    if batch.get("audio_seconds") is not None:
        counts["audio_seconds"] = float(batch["audio_seconds"])
    return counts


def seed_for_rank(seed: int, rank: int) -> int:
    """Seeds Python, NumPy and torch (every device) with `seed + rank` and returns that seed."""
    return L.seed_everything(seed + rank, workers=True, verbose=False)


class RankSeed(Callback):
    """Reseeds each process with `seed + global rank` once the processes have started (Lightning's `setup`).

    `train` seeds every process alike before building the model, so that all ranks start from the same weights;
    left at that, every rank would also draw the same SpecAugment masks, dropout and random segments, which
    wastes the data parallelism. The bucketing sampler shuffles from its own `seed + epoch` generator, the same on
    every rank by design, so the batches' split across ranks is not affected. A rerun with the same seed and world
    size draws the same numbers on each rank.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        seed_for_rank(self.seed, trainer.global_rank)


class ThroughputMonitor(Callback):
    """Logs `throughput/samples_per_s`, `throughput/tokens_per_s` and `throughput/audio_s_per_s` while training.

    Each figure is the batches' totals over the wall time of the last `window` training batches, data
    loading included (timed from one batch's end to the next; validation and epoch boundaries restart
    the clock). Under DDP the figures are this process's times `world_size`, the whole job's estimate.
    With `prog_bar`, the headline figure (audio seconds per second, else samples per second) joins the
    progress bar. `clock` is injectable for tests.
    """

    def __init__(self, window: int = 20, prog_bar: bool = True, clock: Callable[[], float] = time.perf_counter):
        if window < 1:
            raise ValueError(f"ThroughputMonitor window={window} must be at least 1 batch")
        self.prog_bar = prog_bar
        self.clock = clock
        self._history: deque[tuple[float, dict[str, float]]] = deque(maxlen=window)
        self._last_end: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._last_end is None:
            self._last_end = self._now(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self._now(pl_module)
        elapsed, self._last_end = now - self._last_end, now
        if not isinstance(batch, dict) or elapsed <= 0:  # a batch the data layer emptied (None)
            return
        self._history.append((elapsed, batch_counts(batch)))
        seconds = sum(elapsed for elapsed, _ in self._history)
        totals: dict[str, float] = {}
        for _, counts in self._history:
            for key, value in counts.items():
                totals[key] = totals.get(key, 0.0) + value
        names = {"samples": "throughput/samples_per_s", "tokens": "throughput/tokens_per_s",
                 "audio_seconds": "throughput/audio_s_per_s"}
        headline = "audio_seconds" if "audio_seconds" in totals else "samples"
        for key, total in totals.items():
            pl_module.log(names[key], total * trainer.world_size / seconds, on_step=True, on_epoch=False,
                          batch_size=1, prog_bar=self.prog_bar and key == headline)

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize(pl_module.device)
        return self.clock()


class SpeechProgressBar(TQDMProgressBar):
    """The TQDM bar with the first optimiser's learning rate and without the logger's version number."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if trainer.optimizers:
            items["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.2e}"
        return items


class ValidationKeepsTrainingRandomness(Callback):
    """Puts every random generator back, after validation, where the last training batch left it.

    Validation draws random numbers: the validation loader's iterator draws its base seed from torch's global
    generator, and VITS's and SoundStorm's sample generation and Bark's sampling draw more. Without this, the
    training steps after a validation depend on whether, and how often, it ran; a run resumed from an epoch's
    last batch skips that epoch's validation, and exact resume needs the same stream either way. The state is
    taken at the end of each training batch because Lightning creates the validation iterator (and draws its
    seed) before `on_validation_start`.
    """

    def __init__(self) -> None:
        self._after_last_batch: dict[str, Any] | None = None

    @staticmethod
    def _states() -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._after_last_batch = self._states()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_last_batch is None or trainer.sanity_checking:
            return
        states = self._after_last_batch
        torch.set_rng_state(states["torch"])
        np.random.set_state(states["numpy"])
        random.setstate(states["python"])
        if states["cuda"] is not None:
            torch.cuda.set_rng_state_all(states["cuda"])


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` at every validation, also when the monitored metric got worse.

    Lightning 2.6's `save_last` writes `last.ckpt` only together with a new best checkpoint, so after a worse
    epoch `ckpt_path=last` would resume from an older one. Its own class gives it a state key of its own beside
    the monitoring ModelCheckpoint (Lightning refuses two of one type whose settings give the same key)."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)

    def _should_save_on_train_epoch_end(self, trainer: L.Trainer) -> bool:
        """At validation end whenever the run validates, as `save_on_train_epoch_end: false` in the monitoring
        checkpoint's config: resumed from a checkpoint written in `on_train_epoch_end`, Lightning 2.6 counts
        that epoch twice in an iteration-based run (`max_steps`), so the next epoch gets the sampler order of
        the one after it. Only a run without validation saves at the epoch's end."""
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        val_batches = trainer.num_val_batches
        return (sum(val_batches) if isinstance(val_batches, list) else val_batches) == 0


class TimedLastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `train_time_interval` of training (mid-epoch, for long epochs), beside the validation-time
    ModelCheckpoint that writes the same file. Unlike a plain ModelCheckpoint it writes nothing when training ends,
    so that a finished run's `last.ckpt` stays the main checkpoint's, at the last validation."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: ModelCheckpoint would write `last.ckpt` here once more, as the time interval never saved."""

