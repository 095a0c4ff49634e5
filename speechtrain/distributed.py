"""Distributed training helpers: which modules are a model family's repeated blocks, the fully sharded (FSDP2)
strategy built from them, and activation checkpointing of the same blocks without FSDP.

FSDP shards a model at the granularity of its wrapped submodules and activation checkpointing recomputes
whole submodules, so both want the same units: the blocks a model stacks. Each model class names its own in a
`block_classes` class attribute (as transformers' `_no_split_modules`), so no family is named here.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.utils.checkpoint
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from speechtrain.errors import CheckpointError
from speechtrain.safe_load import checkpoint_unpickling

log = logging.getLogger(__name__)

def block_classes(module: nn.Module) -> set[type[nn.Module]]:
    """The concrete classes of the repeated blocks inside `module`: FSDP wrap units, checkpointing units.

    A block is an instance of a class listed in the `block_classes` attribute of `module` or of any submodule
    (a task holds its model, and VITS's task its discriminator too). Raises ValueError when there is none: FSDP
    would then put the whole model in one unit, gathering every parameter at once, which defeats sharding.
    """
    bases = tuple({cls for m in module.modules() for cls in getattr(m, "block_classes", ())})
    found = {type(m) for m in module.modules() if bases and isinstance(m, bases)}
    if not found:
        listed = ", ".join(sorted(b.__name__ for b in bases)) or "none listed"
        raise ValueError(
            f"{type(module).__name__} has no submodule of a block class ({listed}); give its model a "
            "`block_classes` class attribute listing the classes FSDP should wrap"
        )
    return found


def _recomputed_forward(block: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    if block.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpoint_block_activations(module: nn.Module) -> int:
    """Activation checkpointing without FSDP: every block of `module` (its `block_classes`) keeps only its inputs
    for the backward pass and recomputes the rest there (non-reentrant `torch.utils.checkpoint`, which replays the
    dropout masks), trading one more forward of each block for its activations. Only while training with
    gradients: evaluation and cached decoding run as before. The forward is wrapped in place, not the module, so
    parameter names, state dicts, LoRA targets and exports do not change. Returns the number of blocks."""
    blocks = [m for m in module.modules() if type(m) in block_classes(module)]
    for block in blocks:
        if not isinstance(block.forward, functools.partial):  # already wrapped: keep one level
            block.forward = functools.partial(_recomputed_forward, block, block.forward)
    return len(blocks)


def shard_module(
    module: nn.Module, mesh: DeviceMesh, blocks: set[type[nn.Module]], activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True,
    root_methods: tuple[str, ...] = ("training_step", "validation_step"),
) -> None:
    """Applies FSDP2 (`fully_shard`) in place: each block its own unit, then `module` itself for the rest.

    With `activation_checkpointing` every block's activations are recomputed in the backward pass. With
    `param_dtype` (e.g. bfloat16) parameters are gathered in that dtype for compute while gradients are
    reduced and kept in fp32.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if activation_checkpointing:
        apply_activation_checkpointing(module, check_fn=lambda m: type(m) in blocks)
    options = dict(mesh=mesh, reshard_after_forward=reshard_after_forward,
                   mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32))
    for submodule in list(module.modules()):
        if type(submodule) in blocks:
            fully_shard(submodule, **options)
    fully_shard(module, **options)
    # The rest (embeddings, projections, norms) is gathered for a whole step: Lightning calls the task's step
    # methods, not its forward, and models are entered through encode/decode/forward_train as well.
    for name in root_methods:
        register_fsdp_forward_method(module, name)


class FullyShardedStrategy(ModelParallelStrategy):
    """Fully sharded data parallel (torch FSDP2) over every process, on GPUs (nccl) and CPUs (gloo).

    Lightning's `FSDPStrategy` wraps torch's FSDP1, which refuses the CPU and cannot clip gradients by
    norm; FSDP2 keeps parameters and gradients as DTensors, so `torch.nn.utils.clip_grad_norm_` (what
    `gradient_clip_val` and a task's `clip_gradients` call) computes the norm over all shards. Lightning
    applies FSDP2 in `LightningModule.configure_model`; this strategy installs that hook itself (sharding the
    `block_classes` of the module), so tasks carry no FSDP code. Checkpoints are folders of per-rank shards
    (`save_distributed_checkpoint=True`) or one file gathered on rank 0.
    """

    def __init__(
        self, activation_checkpointing: bool = False, param_dtype: str | None = None,
        reshard_after_forward: bool = True, save_distributed_checkpoint: bool = True, **options: Any,
    ) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **options)
        if param_dtype is not None and not isinstance(getattr(torch, param_dtype, None), torch.dtype):
            raise ValueError(f"param_dtype={param_dtype!r} is not a torch dtype name (bfloat16, float16, float32)")
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype = None if param_dtype is None else getattr(torch, param_dtype)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # one mesh dimension: every rank shards
        super().setup_environment()
        module = self.lightning_module
        if is_overridden("configure_model", module):
            raise TypeError(f"{type(module).__name__} defines configure_model; FullyShardedStrategy shards the "
                            "module itself, so use Lightning's ModelParallelStrategy instead")
        module.configure_model = functools.partial(
            shard_module, module, self.device_mesh["data_parallel"], block_classes(module),
            self.activation_checkpointing, self.param_dtype, self.reshard_after_forward,
        )

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's load (this strategy reads checkpoints itself, not through the `CheckpointIO` plugin) with the
        plugin's rule: a single file `weights_only` with speechtrain's allowlist unless `trust_checkpoint`; a folder
        of shards only with `trust_checkpoint`, since torch's distributed checkpoint reader unpickles the folder's
        `.metadata` without any restriction."""
        if getattr(self.checkpoint_io, "trust_checkpoint", False):
            return super().load_checkpoint(checkpoint_path, weights_only=False)
        if Path(checkpoint_path).is_dir():
            raise CheckpointError(
                f"{checkpoint_path} is a folder of FSDP shards, which torch's distributed checkpoint reader unpickles "
                "with no restriction on what runs; resume it with trust_checkpoint=true if your own run wrote it, "
                "or save single-file checkpoints (trainer.strategy.save_distributed_checkpoint=false), which resume "
                "without that risk"
            )
        with checkpoint_unpickling(checkpoint_path):
            return super().load_checkpoint(checkpoint_path, weights_only=True)


def unused_parameters_reason(module: nn.Module) -> str | None:
    """Why a training step of `module` may leave parameters without a gradient, or None when it cannot.

    A manually optimised module (a GAN step: the discriminator loss reaches none of the generator's parameters) may,
    and so may any submodule that declares `may_leave_parameters_unused` (layerdrop, SoundStorm's
    self-conditioning), so that no family is named here.
    """
    if isinstance(module, L.LightningModule) and not module.automatic_optimization:
        return "manual optimisation"
    declaring = [type(m).__name__ for m in module.modules() if getattr(m, "may_leave_parameters_unused", False)]
    return f"{', '.join(sorted(set(declaring)))} may leave parameters unused" if declaring else None


def build_strategy(strategy: str | Strategy, module: L.LightningModule) -> str | Strategy:
    """The Trainer's `strategy` for `module`: as configured, except that plain DDP (`ddp`, or a `DDPStrategy`
    without `find_unused_parameters`) looks for unused parameters when a step may leave some
    (`unused_parameters_reason`); otherwise DDP fails at the next step ("Expected to have finished reduction in the
    prior iteration")."""
    reason = unused_parameters_reason(module)
    if reason is None:
        return strategy
    if strategy == "ddp":
        log.info("%s: using DDP with find_unused_parameters=True", reason)
        return "ddp_find_unused_parameters_true"
    if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
        log.info("%s: setting find_unused_parameters=True on the DDP strategy", reason)
        strategy._ddp_kwargs["find_unused_parameters"] = True
    return strategy
