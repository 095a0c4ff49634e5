"""The optimiser and learning-rate schedule of every automatically optimised task (ASR, SoundStorm, Bark).

Weight decay applies to matrices only: biases, norms and other parameters of fewer than 2 dimensions go to a
group with `weight_decay=0`. Frozen parameters (a frozen encoder, the base weights under LoRA) are left out, and
so is a group left empty by that: some optimisers refuse an empty group, and it would only shift the group
indices that a resumed optimiser state is matched by. The schedule is `tasks/schedules.py`'s warm-up then decay,
stepped once per optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from speechtrain.tasks.schedules import step_schedule

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


def weight_decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters of `model` as optimiser groups: with weight decay (>= 2 dimensions) and without;
    empty groups are dropped."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2]},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def warmup_optimizer(model: nn.Module, optimizer_factory: OptimizerFactory, estimated_steps: float,
                     warmup_steps: int = 0, decay: str = "linear", min_lr_ratio: float = 0.0) -> dict[str, Any]:
    """Lightning's `configure_optimizers` answer: the configured optimiser (AdamW from the config) over
    `weight_decay_groups(model)`, with a warm-up + decay schedule over `estimated_steps` (Lightning's
    `trainer.estimated_stepping_batches`) stepped per optimiser step."""
    optimizer = optimizer_factory(weight_decay_groups(model))
    scheduler = step_schedule(optimizer, estimated_steps, warmup_steps, decay, min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
