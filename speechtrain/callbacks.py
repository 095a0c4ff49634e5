"""Lightning callbacks every recipe shares: per-rank seeding, training throughput, a progress bar that shows the
learning rate, and validation that leaves training's random numbers alone; and, for long runs, an exponential moving
average of the weights (`EMAWeights`, off by default: `+callbacks@callbacks.ema=ema`).

Throughput is read from the batch itself, so any task works whose collator follows this protocol
(`AsrCollator` and `TtsCollator` do):
    ids:           list[str], one per sample (else the first dimension of the first tensor counts samples)
    labels:        optional int64 [B, L], target tokens; -100 marks padding. Gives tokens per second.
    audio_seconds: optional float, seconds of unpadded audio in the batch. Gives audio seconds per second
                   (the real-time factor of training).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from speechtrain.distributed import any_rank_flags
from speechtrain.layers.labels import IGNORE_INDEX

log = logging.getLogger(__name__)


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


class EMAWeights(Callback):
    """An exponential moving average (EMA) of `pl_module.model`'s trainable floating-point parameters, which
    often validates and generalises better than the last weights of a long run at a constant or slowly decaying
    learning rate.

    The average (the "shadow") is fp32, on the parameters' device, and updated in place with one fused
    `torch._foreach_lerp_`: `shadow += (1 - decay) * (weights - shadow)`. It is updated at the end of every training
    batch in which `trainer.global_step` reached or passed a multiple of `every_n_steps`, that is after optimiser
    steps, whatever gradient accumulation does. VITS steps two optimisers a batch (discriminator, then generator),
    and `global_step` counts both: its shadow is updated once a batch, after the generator's step, and
    `every_n_steps=2` updates it as often as 1. Until `global_step` passes `start_step` the shadow copies the
    weights at every step, so the average starts from the weights at `start_step` (a warm-up that skips the first,
    fast-moving weights); with 0 it starts from the weights training starts with.

    The shadow is the callback's checkpoint state (`callbacks["EMAWeights"]`, whole tensors on the CPU): a resume
    continues it exactly, and a resume from a checkpoint without one starts a new average from the restored
    weights. The checkpoint's `state_dict` keeps the training weights. With `use_for_validation`, validation runs
    with the average swapped in (so `val/loss`, and what monitors it, judge the average) and training continues
    from its own weights, bit for bit; the sanity check, which runs before any step, validates the training
    weights. With `export_ema`, the average is copied into the model once `fit` has finished (`on_fit_end`, after
    every checkpoint that training writes, so that none saves the average as training weights), so that
    `train`'s export, and its test pass, use it.

    Under DDP every rank keeps its own shadow of the same weights, identical without any communication. Under
    FSDP2 each rank averages only its shards of the parameters (DTensors): the shadow is a shard too, and only
    saving a checkpoint gathers it, shard by shard, into the whole tensors that global rank 0 writes; a resume
    takes each rank's shards from them again, so that it may change the number of ranks.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, start_step: int = 0,
                 use_for_validation: bool = True, export_ema: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMAWeights decay={decay} must be between 0 and 1")
        if every_n_steps < 1:
            raise ValueError(f"EMAWeights every_n_steps={every_n_steps} must be at least 1")
        if start_step < 0:
            raise ValueError(f"EMAWeights start_step={start_step} must not be negative")
        self.decay, self.every_n_steps, self.start_step = decay, every_n_steps, start_step
        self.use_for_validation, self.export_ema = use_for_validation, export_ema
        self.updates = 0  # averaging updates so far (copies before start_step not counted)
        self._names: list[str] | None = None
        self._shadow: list[torch.Tensor] | None = None
        self._model: torch.nn.Module | None = None
        self._last_step = 0  # global_step when the shadow last looked at the weights
        self._loaded: dict[str, Any] | None = None  # checkpoint state, placed on the parameters in on_train_start
        self._training_weights: list[torch.Tensor] | None = None  # while validation runs on the average

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """The average by parameter name: this process's tensors (shards under FSDP2), not copies."""
        if self._shadow is None:
            return {}
        return dict(zip(self._names, self._shadow, strict=True))

    @staticmethod
    def _trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in module.named_parameters() if p.requires_grad and p.is_floating_point()}

    def _weights(self, module: torch.nn.Module) -> list[torch.Tensor]:
        """The tensors this process holds of `module`'s averaged parameters (its local shards of DTensors), in the
        shadow's order; `module`'s parameters are looked up by name, so any copy of the model will do."""
        if self._shadow is None:
            raise RuntimeError("EMAWeights has no average yet: it starts when training starts")
        parameters = dict(module.named_parameters())
        missing = [name for name in self._names if name not in parameters]
        if missing:
            raise ValueError(f"{type(module).__name__} lacks {len(missing)} averaged parameters, e.g. {missing[0]}; "
                             "pass the task's `model`, not the task")
        return [_local_tensor(parameters[name]).detach() for name in self._names]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._model = pl_module.model
        parameters = self._trainable(self._model)
        self._names = list(parameters)
        with torch.no_grad():
            if self._loaded is None:
                self._shadow = [_local_tensor(p).detach().to(torch.float32, copy=True) for p in parameters.values()]
                self._last_step = trainer.global_step
            else:
                self._shadow = _shards_of(self._loaded["shadow"], parameters)
                self._last_step, self.updates = self._loaded["step"], self._loaded["updates"]
                self._loaded = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._shadow is None or step == self._last_step:  # no optimiser step (gradient accumulation, a skip)
            return
        with torch.no_grad():
            weights = [w.float() for w in self._weights(self._model)]  # no copy of fp32 weights
            if step <= self.start_step:
                torch._foreach_copy_(self._shadow, weights)
            elif step // self.every_n_steps > self._last_step // self.every_n_steps:
                torch._foreach_lerp_(self._shadow, weights, 1.0 - self.decay)
                self.updates += 1
        self._last_step = step

    def apply_to(self, model: torch.nn.Module) -> None:
        """Copies the average into `model` (the task's `model`, or any module with its parameter names)."""
        with torch.no_grad():
            for weight, average in zip(self._weights(model), self._shadow, strict=True):
                weight.copy_(average)  # across devices too: Lightning moves a single-device model to the CPU at fit end

    @contextlib.contextmanager
    def swapped_in(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """`module` with the average in place of its weights inside the block, its own weights back after it."""
        with torch.no_grad():
            kept = [w.clone() for w in self._weights(module)]
        self.apply_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._weights(module), kept)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.use_for_validation or trainer.sanity_checking or self._shadow is None:
            return
        with torch.no_grad():
            self._training_weights = [w.clone() for w in self._weights(pl_module.model)]
        self.apply_to(pl_module.model)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_training_weights(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """An exception during validation: the training weights go back before `OnExceptionCheckpoint` (which
        Lightning runs after every other callback) saves them."""
        self._restore_training_weights(pl_module)

    def _restore_training_weights(self, pl_module: L.LightningModule) -> None:
        if self._training_weights is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self._weights(pl_module.model), self._training_weights)
        self._training_weights = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.export_ema or self._shadow is None:
            return
        self.apply_to(pl_module.model)
        if trainer.is_global_zero:
            log.info("EMAWeights: the model now holds the moving average of %d parameters (decay %g, %d updates) "
                     "for the export", len(self._shadow), self.decay, self.updates)

    def state_dict(self) -> dict[str, Any]:
        """Whole fp32 tensors on the CPU by parameter name (gathered from every rank's shards under FSDP2, a
        collective; kept on global rank 0 alone, which alone writes the callbacks' states), and the counters."""
        if self._shadow is None:
            return self._loaded or {}
        parameters = dict(self._model.named_parameters())
        keep = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        shadow = {}
        for name, average in zip(self._names, self._shadow, strict=True):
            whole = _whole_tensor(average, parameters[name])
            if keep:
                shadow[name] = whole.to("cpu", copy=True)
        return {"step": self._last_step, "updates": self.updates, "decay": self.decay, "shadow": shadow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("shadow"):
            self._loaded = state_dict


def _local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this process holds: a DTensor's local shard (FSDP2), else `tensor` itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _whole_tensor(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`local`, a shard laid out as the DTensor `like`'s, gathered whole (a collective); a plain tensor as it is."""
    if not hasattr(like, "to_local"):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride()).full_tensor()


def _shards_of(whole: dict[str, torch.Tensor], parameters: dict[str, torch.nn.Parameter]) -> list[torch.Tensor]:
    """A checkpoint's whole averages as fp32 tensors laid out as `parameters` (each rank's shards of DTensors, cut
    locally: every rank loads the same whole tensors), in `parameters`' order."""
    from torch.distributed.tensor import distribute_tensor

    if set(whole) != set(parameters):
        missing, unexpected = sorted(set(parameters) - set(whole)), sorted(set(whole) - set(parameters))
        raise ValueError(f"the checkpoint's EMA weights do not match the model's trainable parameters: missing "
                         f"{missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    shards = []
    for name, parameter in parameters.items():
        tensor = whole[name]
        if tensor.shape != parameter.shape:
            raise ValueError(f"the checkpoint's EMA of {name} has shape {tuple(tensor.shape)}, the model's "
                             f"{tuple(parameter.shape)}")
        tensor = tensor.to(parameter.device, torch.float32)
        if hasattr(parameter, "to_local"):
            tensor = distribute_tensor(tensor, parameter.device_mesh, parameter.placements,
                                       src_data_rank=None).to_local()
        shards.append(tensor.clone())
    return shards


class SlurmPreemption(Callback):
    """SLURM's preemption notice (`--signal=USR1@120`), acted on by every rank at the same batch end: each saves
    `hpc_ckpt_N.ckpt` together, rank zero requeues the job (`scontrol requeue`) and training stops; the requeued job
    resumes from that checkpoint (`ckpt_path=last` picks the newest).

    Lightning's own handler saves inside the signal handler, wherever each process happens to be; with more than one
    process that save's collectives can meet another rank's all-reduce, and with FSDP they do. Here the handler only
    raises a flag, and at every batch end the ranks all-reduce it (one scalar), so one rank's signal is enough. The
    run then reports `preempted`: the entry point neither tests nor exports a run that has not finished. Only under
    SLURM with auto-requeue (Lightning's `SLURMEnvironment`); elsewhere nothing changes.
    """

    def __init__(self) -> None:
        self.listening = False  # under SLURM with auto-requeue: the handler is installed
        self.notified = False  # this process got the signal
        self.preempted = False  # every rank saved and stopped

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        # Installed before Lightning registers its handlers (after setup), which then leaves this signal alone.
        signal.signal(environment.requeue_signal, self._notice)
        self.listening = True

    def _notice(self, signum: int, frame: Any) -> None:
        self.notified = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Outside SLURM nothing is asked: no all-reduce, no host read in every step of every other run.
        if not self.listening or self.preempted or not any_rank_flags(self.notified, trainer.strategy.root_device):
            return
        rank_zero_info("SLURM preemption notice: saving hpc_ckpt_N.ckpt on every rank, requeueing, stopping")
        trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)  # save on all ranks, requeue on 0
        trainer.should_stop = True
        self.preempted = True
        # Stop at once, and leave the hpc checkpoint the newest, which the resume picks: no validation (Lightning
        # validates a run stopped early, and its checkpoints would follow) and no last.ckpt when training ends.
        trainer.limit_val_batches = 0
        for callback in trainer.checkpoint_callbacks:
            callback.save_last = False
