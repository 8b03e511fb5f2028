"""The resumable Optuna sweeper, a Hydra ``Sweeper`` (``hydra/sweeper=resumable_optuna``).

Hydra imports every module of ``hydra_plugins`` when it starts, and ``hydra_plugins.brats_lightning_sweeper``
defines its plugin class over this one, so this module imports nothing of the optional ``sweep`` extra: the
extra is checked when the sweeper is built (one line and exit status 2 when it is missing), and the work is done by
:class:`~brats_lightning.sweep.optuna_impl.ResumableOptunaSweeperImpl` and :mod:`brats_lightning.sweep.study`.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ResumableOptunaSweeper(Sweeper):
    """An Optuna search over Hydra's launcher, continued by the same command after a kill.

    Args:
        **config: the fields of ``hydra.sweeper`` (sampler, direction, storage, study_name, n_trials, n_jobs,
            max_failure_rate, params: :class:`~brats_lightning.sweep.optuna_impl.ResumableOptunaSweeperImpl`).
    """

    def __init__(self, **config: Any) -> None:
        from brats_lightning.errors import cli
        from brats_lightning.sweep.study import require_sweep_extra

        cli(require_sweep_extra)()
        from brats_lightning.sweep.optuna_impl import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from brats_lightning.errors import cli

        cli(self.sweeper.sweep)(arguments)
