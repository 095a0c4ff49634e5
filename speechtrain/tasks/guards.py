"""Keeping a long run from training on garbage, in step on every process: a batch that the data layer emptied
or a loss that is NaN or infinite skips the step on every rank together, is counted, and too many non-finite
losses in a row stop the run with a message that says what to try.

Under DDP a rank cannot skip on its own: the others would wait in the gradient all-reduce until the
collective timeout (and Lightning refuses a `None` training step with more than one process). So each
condition is all-reduced (`ranks_flagging`), every rank takes the same decision, and an automatically
optimised task (`GuardedTask`) returns `skipped_step_loss()` on every rank: zero times the sum of its
trainable parameters, whose backward gives each one a zero gradient, so that every all-reduce matches. Those
gradients are then dropped before the optimiser runs (AdamW leaves a parameter without a gradient alone:
no update, no weight decay, no moment change), so a skipped step changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from speechtrain.distributed import is_multiprocess

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with a NaN or infinite loss."""


def ranks_flagging(flag: torch.Tensor | bool, device: torch.device | str = "cpu") -> tuple[bool, int]:
    """(whether this process raises `flag`, how many processes do): one all-reduce under torch.distributed, so
    every rank must call it at the same point of its step; the flag itself in a single process, where a Python flag
    never touches the device. One host read of a tensor flag."""
    if not is_multiprocess():
        flagged = bool(flag)
        return flagged, int(flagged)
    here = torch.as_tensor(flag, device=device).detach().reshape(1).float()
    everywhere = here.clone()
    dist.all_reduce(everywhere)
    flagged_here, count = torch.cat([here, everywhere]).tolist()
    return bool(flagged_here), int(count)


def batch_missing_on_any_rank(batch: Any, device: torch.device | str) -> bool:
    """True on every rank when any rank's batch is None (every one of its items failed to load: the dataset has
    said which). Decided before the forward pass, which under FSDP is itself collective."""
    here, count = ranks_flagging(batch is None, device)
    if count and not here:
        log.warning("skipping this step on every process: %d other process(es) got an empty batch", count)
    return count > 0


class NonFiniteGuard:
    """Counts skipped steps; `check` says whether a loss may be used for an update, the same on every rank."""

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def check(self, loss: torch.Tensor, step: int, ids: Sequence[str] = ()) -> bool:
        """True when the loss is finite on every process; otherwise log, count, and raise (on every rank) once
        too many came in a row. Every rank must call it at the same point of its step."""
        here, count = ranks_flagging(~torch.isfinite(loss.detach()), loss.device)
        if not count:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        if here:
            log.warning("skipping step %d: loss is %s (batch ids %s); %d in a row",
                        step, float(loss.detach()), ", ".join(list(ids)[:4]), self.consecutive)
        else:
            log.warning("skipping step %d: the loss is not finite on %d other process(es); %d in a row",
                        step, count, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a non-finite loss; lower the learning rate, check the "
                "data, or raise task.max_consecutive_nonfinite"
            )
        return False


class GuardedTask(L.LightningModule):
    """Base of the automatically optimised tasks: a training step that every process skips together.

    A subclass implements `training_loss(batch) -> (loss, {name: value})`; the base logs `train/loss` and each
    `train/NAME` (summed over the epoch for the names in `summed_metrics`, averaged otherwise), and, as epoch
    totals, `train/skipped_batches` and `train/nonfinite_steps` (decided across ranks, so the same on each) and
    `train/skipped_items` (items the collator dropped, summed over ranks).
    """

    summed_metrics: frozenset[str] = frozenset()

    def __init__(self, max_consecutive_nonfinite: int = 10) -> None:
        super().__init__()
        self.nonfinite = NonFiniteGuard(max_consecutive_nonfinite)
        self.skipped_batches = 0
        self._epoch_counts = {"skipped_batches": 0, "nonfinite_steps": 0, "skipped_items": 0}
        self._trained_since_optimizer_step = False

    def training_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise and further metrics to log under `train/`."""
        raise NotImplementedError

    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor:
        if batch_missing_on_any_rank(batch, self.device):
            return self._skip(nonfinite=False)
        self._epoch_counts["skipped_items"] += int(batch.get("num_skipped", 0))
        loss, metrics = self.training_loss(batch)
        if not self.nonfinite.check(loss, self.global_step, batch["ids"]):
            return self._skip(nonfinite=True)
        self._trained_since_optimizer_step = True
        batch_size = len(batch["ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, batch_size=batch_size,
                     reduce_fx="sum" if name in self.summed_metrics else "mean")
        return loss

    def _skip(self, nonfinite: bool) -> torch.Tensor:
        self.skipped_batches += 1
        self._epoch_counts["skipped_batches"] += 1
        self._epoch_counts["nonfinite_steps"] += int(nonfinite)
        return self.skipped_step_loss()

    def skipped_step_loss(self) -> torch.Tensor:
        """0 x the sum of every trainable parameter: a backward that reaches each one with a zero gradient, so
        DDP's all-reduce (and FSDP's reduce-scatter) runs as on any step. Local shards under FSDP."""
        sums = [(p.to_local() if hasattr(p, "to_local") else p).sum().float()
                for p in self.parameters() if p.requires_grad]
        return torch.stack(sums).sum() * 0.0 if sums else torch.zeros((), device=self.device)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the (zero) gradients when every batch since the last update was skipped: no update at all."""
        if not self._trained_since_optimizer_step:
            optimizer.zero_grad(set_to_none=True)
        self._trained_since_optimizer_step = False

    def on_train_epoch_end(self) -> None:
        counts = self._epoch_counts
        # decided across ranks, so the same on each: the max over ranks is that value
        self.log("train/skipped_batches", float(counts["skipped_batches"]), reduce_fx="max", sync_dist=True)
        self.log("train/nonfinite_steps", float(counts["nonfinite_steps"]), reduce_fx="max", sync_dist=True)
        self.log("train/skipped_items", float(counts["skipped_items"]), reduce_fx="sum", sync_dist=True)
        self._epoch_counts = dict.fromkeys(counts, 0)
