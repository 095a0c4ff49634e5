"""Hydra loads launchers only from the `hydra_plugins` namespace package: this module puts
`speechtrain.sweeps.TorchrunLauncher` there, for `hydra/launcher=torchrun` (conf/hydra/launcher/torchrun.yaml,
whose defaults take the schema below, so that a misspelt option fails when the config is composed)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from speechtrain import sweeps


@dataclass
class TorchrunLauncherConf:
    """The options of `TorchrunLauncher`; see `speechtrain.sweeps.TorchrunLauncher`."""

    _target_: str = "hydra_plugins.speechtrain_launchers.TorchrunLauncher"
    nproc_per_node: Any = None  # an int or torchrun's "gpu"; null follows the job's trainer.devices
    script: str | None = None
    torchrun_args: list[str] = field(default_factory=list)
    stderr_tail_lines: int = 40


ConfigStore.instance().store(group="hydra/launcher", name="torchrun_schema", node=TorchrunLauncherConf,
                             provider="speechtrain")


class TorchrunLauncher(sweeps.TorchrunLauncher):
    """Each job of a multirun as its own torchrun process group; see `speechtrain.sweeps.TorchrunLauncher`."""
