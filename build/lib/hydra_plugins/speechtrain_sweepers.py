"""Hydra loads sweepers only from the `hydra_plugins` namespace package: this module puts
`speechtrain.sweeps.OptunaSweeper` there, for `hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml)."""

from speechtrain import sweeps


class OptunaSweeper(sweeps.OptunaSweeper):
    """Bayesian search with current Optuna's ask/tell; see `speechtrain.sweeps.OptunaSweeper`."""
