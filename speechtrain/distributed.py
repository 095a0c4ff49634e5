"""Distributed training helpers: which modules are a model family's repeated blocks, the fully sharded (FSDP2)
strategy built from them, and activation checkpointing and compilation of the same blocks.

FSDP shards a model at the granularity of its wrapped submodules and activation checkpointing recomputes
whole submodules, so both want the same units: the blocks a model stacks. Each model class names its own in a
`block_classes` class attribute (as transformers' `_no_split_modules`), so no family is named here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.utils.checkpoint
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from speechtrain.errors import CheckpointError, ConfigError
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


def blocks_of(module: nn.Module) -> list[nn.Module]:
    """The block instances inside `module` (those of its `block_classes`), in module order."""
    classes = block_classes(module)
    return [m for m in module.modules() if type(m) in classes]


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
    blocks = blocks_of(module)
    for block in blocks:
        if not isinstance(block.forward, functools.partial):  # already wrapped: keep one level
            block.forward = functools.partial(_recomputed_forward, block, block.forward)
    return len(blocks)


def compile_blocks(module: nn.Module, options: Mapping[str, Any] | None = None) -> int:
    """`torch.compile` of every block of `module` (its `block_classes`), in place (`nn.Module.compile`), as
    torchtune and torchtitan compile per layer: each block's graph is small, compiles once and is shared by every
    instance of the class, and the whole model need not be traceable. Parameter names, state dicts, LoRA targets,
    exports and FSDP's per-block units stay as they are (compiled before sharding, which wraps the compiled blocks).
    `options` are `torch.compile`'s (`mode`, `backend`, `dynamic`, `fullgraph`); cached decoding's growing key
    length is a dynamic dimension after the first recompile. Returns the number of blocks."""
    blocks = blocks_of(module)
    for block in blocks:
        block.compile(**dict(options or {}))
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
    options = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32))
    for submodule in list(module.modules()):
        if type(submodule) in blocks:
            fully_shard(submodule, reshard_after_forward=reshard_after_forward, **options)
    # The root stays gathered from its forward to its backward (FSDP2's default for a root): the backward needs
    # it first, so freeing it would only gather it again at once.
    fully_shard(module, reshard_after_forward=False, **options)
    # The rest (embeddings, projections, norms) is gathered for a whole step: Lightning calls the task's step
    # methods, not its forward, and models are entered through encode/decode/forward_train as well.
    for name in root_methods:
        register_fsdp_forward_method(module, name)
    if isinstance(module, L.LightningModule) and not module.automatic_optimization:
        # A GAN step runs two backward passes through graphs built while the root was gathered; FSDP's end-of-backward
        # callback would free the root's gathered weights after the first (the discriminator's), which the
        # generator's graph still holds ("setStorage ... storage of size 0"). The root stays gathered instead: it
        # holds only what no block holds (embeddings, projections, norms).
        module.set_reshard_after_backward(False, recurse=False)


def is_fully_sharded(module: nn.Module) -> bool:
    """True when `module` is (or holds) an FSDP2 unit: its forward passes are collective, so every rank must make
    the same calls in the same order."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def is_multiprocess() -> bool:
    """True inside a process group of more than one rank, where a rank's decision may have to be everyone's."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduced(value: float, device: torch.device | str, op: dist.ReduceOp) -> float:
    """One all-reduce of a scalar over the ranks (one host read); `value` itself in one process."""
    if not is_multiprocess():
        return value
    everywhere = torch.tensor([float(value)], device=device)
    dist.all_reduce(everywhere, op=op)
    return everywhere.item()


def every_rank_agrees(flag: bool, device: torch.device | str) -> bool:
    """True on every rank when `flag` is true on every rank. A loop that calls sharded modules stops on this, not
    on its own rank's condition, or the all-gathers stop matching."""
    return bool(_reduced(flag, device, dist.ReduceOp.MIN))


def any_rank_flags(flag: bool, device: torch.device | str) -> bool:
    """True on every rank when `flag` is true on any rank (a notice one rank received, acted on by all)."""
    return bool(_reduced(flag, device, dist.ReduceOp.MAX))


def fewest_on_any_rank(count: int, device: torch.device | str) -> int:
    """The smallest `count` over the ranks, so that each rank makes the same number of sharded forward passes."""
    return int(_reduced(count, device, dist.ReduceOp.MIN))


def agreed_with_rank_zero(flag: bool, device: torch.device | str) -> bool:
    """Rank zero's `flag` on every rank (one broadcast; `flag` itself in one process): a random decision that
    changes how many sharded passes a step makes is drawn once for all ranks."""
    if not is_multiprocess():
        return flag
    decision = torch.tensor([float(flag)], device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


@contextlib.contextmanager
def root_gathered(module: nn.Module) -> Iterator[None]:
    """The root unit's parameters gathered outside the step methods FSDP wraps (sample generation at the end of a
    validation epoch); the blocks gather themselves as they run. Every rank must enter it and then make the same
    forward calls. Nothing happens to a module that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def full_model(model: nn.Module) -> nn.Module | None:
    """`model` with whole weights, for export: `model` itself unless it is sharded; when it is, a plain copy on the
    CPU on rank 0 and None on the other ranks. Collective under FSDP: every rank must call it. The copy is built from
    the model's own config through its family (`model_from_hf_config`) and takes the gathered state dict strictly."""
    if not is_fully_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from speechtrain.models.registry import get_family

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    hf_config = model.config.to_hf_dict()
    copy = get_family(hf_config["model_type"]).model_from_hf_config(hf_config)
    copy.load_state_dict(state)
    return copy


def check_shardable(module: nn.Module) -> None:
    """Refuses, before training, a module whose steps make a different number of block forwards on each rank
    (a submodule declaring `skips_blocks_at_random`: layerdrop): under FSDP every block forward all-gathers, so the
    ranks' collectives would stop matching and the run would hang."""
    skipping = sorted({type(m).__name__ for m in module.modules() if getattr(m, "skips_blocks_at_random", False)})
    if skipping:
        raise ConfigError(
            f"{', '.join(skipping)} skip layers at random (layerdrop), which each rank draws for itself: under "
            "trainer=fsdp the ranks' all-gathers would stop matching and the run would hang; set "
            "model.config.encoder_layerdrop=0 and model.config.decoder_layerdrop=0, or train with trainer=ddp"
        )


def give_every_parameter_a_state(optimizer: torch.optim.Optimizer) -> int:
    """Gives each parameter that has no optimizer state yet (it has had no gradient: SoundStorm's `null_embed` while
    every step so far was self-conditioned) the state one zero-gradient step at learning rate 0 gives it, leaving the
    others alone; returns how many. torch's distributed checkpoint loader builds the state of every parameter that
    way and then refuses a checkpoint saved without some ("Missing key in checkpoint state_dict"), so a folder of
    shards is saved with all of them, and the run that saved it holds the same states as the run that resumes."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    missing = {id(p) for p in parameters if p.requires_grad and p not in optimizer.state}
    if not missing or not optimizer.state:  # no state at all: the loader initialises every parameter itself
        return 0
    gradients = [p.grad for p in parameters]
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    for p in parameters:
        p.grad = torch.zeros_like(p) if id(p) in missing else None  # the others are skipped by the step
    for group in optimizer.param_groups:
        group["lr"] = torch.zeros_like(group["lr"]) if torch.is_tensor(group["lr"]) else 0.0
    optimizer.step()
    for group, learning_rate in zip(optimizer.param_groups, learning_rates, strict=True):
        group["lr"] = learning_rate
    for p, gradient in zip(parameters, gradients, strict=True):
        p.grad = gradient
    return len(missing)


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
        self, activation_checkpointing: bool = False, param_dtype: str | None = "auto",
        reshard_after_forward: bool = True, save_distributed_checkpoint: bool = True,
        shard_size: int | None = None, **options: Any,
    ) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **options)
        if param_dtype not in (None, "auto") and not isinstance(getattr(torch, param_dtype, None), torch.dtype):
            raise ValueError(f"param_dtype={param_dtype!r} is not a torch dtype name (bfloat16, float16, float32) "
                             "nor auto")
        if shard_size is not None and shard_size < 1:
            raise ValueError(f"shard_size={shard_size}: the number of ranks that shard one copy must be >= 1")
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype_name = param_dtype
        self.reshard_after_forward = reshard_after_forward
        self.shard_size = shard_size

    @property
    def param_dtype(self) -> torch.dtype | None:
        """The dtype parameters are gathered and computed in: `auto` is bfloat16 under bf16 precision (half the
        all-gather traffic of fp32 parameters that autocast would cast anyway), else the parameters' own."""
        if self.param_dtype_name == "auto":
            return torch.bfloat16 if str(self.precision_plugin.precision).startswith("bf16") else None
        return None if self.param_dtype_name is None else getattr(torch, self.param_dtype_name)

    def shard_mesh(self) -> DeviceMesh:
        """Every rank shards one copy (FSDP), or, with `shard_size`, groups of that many consecutive ranks each
        shard a copy and the groups replicate one another (hybrid sharding, HSDP: `shard_size` = GPUs per node
        keeps the all-gathers inside a node and only the gradient all-reduce crosses nodes)."""
        from torch.distributed.device_mesh import init_device_mesh

        world_size = self.world_size
        if self.shard_size is None or self.shard_size == world_size:
            return self.device_mesh["data_parallel"]
        if world_size % self.shard_size:
            raise ValueError(f"shard_size={self.shard_size} does not divide the {world_size} ranks into equal groups")
        return init_device_mesh(self.root_device.type, (world_size // self.shard_size, self.shard_size),
                                mesh_dim_names=("replicate", "shard"))

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # one mesh dimension: every rank shards
        super().setup_environment()
        module = self.lightning_module
        check_shardable(module)
        if is_overridden("configure_model", module):
            raise TypeError(f"{type(module).__name__} defines configure_model; FullyShardedStrategy shards the "
                            "module itself, so use Lightning's ModelParallelStrategy instead")
        module.configure_model = functools.partial(
            shard_module, module, self.shard_mesh(), block_classes(module),
            self.activation_checkpointing, self.param_dtype, self.reshard_after_forward,
        )

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        give_every_parameter_a_state(optimizer)
        return super().optimizer_state(optimizer)

    @contextlib.contextmanager
    def block_backward_sync(self) -> Iterator[None]:
        """Gradient accumulation: no reduce-scatter on the micro-batches before the last one (Lightning's own
        version handles only DDP); FSDP keeps their gradients unsharded and reduces the sum once."""
        from torch.distributed.fsdp import FSDPModule

        module = self.model
        if not isinstance(module, FSDPModule):
            yield
            return
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

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


SHARD_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a folder of shards
LIGHTNING_METADATA = "meta.pt"  # what Lightning's ModelParallelStrategy saves beside the shards: epoch, loops, ...


def is_shard_folder(path: str | Path) -> bool:
    """True for a checkpoint saved as a folder of FSDP shards (`save_distributed_checkpoint: true`)."""
    return (Path(path) / SHARD_METADATA).is_file()


def read_shard_folder(folder: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A folder of FSDP shards as one checkpoint dict, in this process alone (no process group, any number of ranks
    wrote it): Lightning's metadata and the whole `state_dict`, without the optimizer state, which only a resume
    needs. Only with `trust_checkpoint`: torch's reader unpickles the folder's index without restriction."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = Path(folder)
    if not trust_checkpoint:
        raise CheckpointError(
            f"{folder} is a folder of FSDP shards, which torch's distributed checkpoint reader unpickles with no "
            "restriction on what runs; pass --trust-checkpoint (trust_checkpoint=true) if your own run wrote it"
        )
    with tempfile.TemporaryDirectory(prefix="speechtrain-shards-") as scratch:
        whole = Path(scratch) / "whole.pt"
        dcp_to_torch_save(folder, whole)
        state = torch.load(whole, map_location="cpu", weights_only=False)
    metadata = folder / LIGHTNING_METADATA
    lightning_state = torch.load(metadata, map_location="cpu", weights_only=False) if metadata.is_file() else {}
    return {**lightning_state, "state_dict": state["state_dict"]}


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
