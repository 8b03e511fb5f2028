"""The plugin's ``OptunaSweeperImpl``, resumable (imported once the ``sweep`` extra has been checked).

Before the plugin's loop runs, :func:`brats_lightning.sweep.study.resume_study` marks the trials a killed sweep left
running as failed and counts the complete ones: only the missing trials run, their job folders are numbered
after the existing ones, and a seeded sampler continues its seed. Each trial records its job number.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

from brats_lightning.errors import ConfigError
from brats_lightning.sweep.study import JOB_ATTR, build_sampler, resume_study, study_lock

log = logging.getLogger("brats_lightning.sweep.study")


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    """``OptunaSweeperImpl`` that continues its study: ``sampler`` is the sampler's config (built per sweep)."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: Any,
        custom_search_space: str | None,
        params: Any,
    ) -> None:
        super().__init__(
            None,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            search_space,
            custom_search_space,
            params,
        )
        self.sampler_config = sampler

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None
        if not self.storage or not self.study_name:
            raise ConfigError(
                "hydra.sweeper.storage and hydra.sweeper.study_name must be set: the study they name is what a "
                "resumed sweep continues"
            )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with study_lock(sweep_dir):
            objective = str(self.config.get("optimized_metric") or "")
            if not objective or objective.startswith("test/"):
                raise ConfigError(
                    f"optimized_metric={objective or 'null'}: a hyper-parameter search maximises a validation or "
                    "out-of-fold figure, never a test figure (e.g. optimized_metric=val/best_dice_mean)"
                )
            point = resume_study(
                str(self.storage),
                str(self.study_name),
                self._get_directions(),
                sweep_dir,
                list(self.config.hydra.overrides.task),
                objective,
            )
            wanted = int(self.n_trials)
            self.n_trials = max(0, wanted - point.complete)
            self.job_idx = point.next_job
            self.sampler = build_sampler(self.sampler_config, point.trials)
            if point.trials:
                log.info(
                    "Resuming study %s: %d complete of %d trials%s; %d to run, jobs from %d on",
                    self.study_name,
                    point.complete,
                    point.trials,
                    f", killed trials {list(point.marked_failed)} marked failed" if point.marked_failed else "",
                    self.n_trials,
                    point.next_job,
                )
            if not self.n_trials:
                log.info(
                    "Study %s already holds %d complete trials (n_trials=%d)", self.study_name, point.complete, wanted
                )
            super().sweep(arguments)

    def _configure_trials(
        self, trials: list[Any], search_space_distributions: dict[str, Any], fixed_params: dict[str, Any]
    ) -> Sequence[Sequence[str]]:
        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
        # the plugin launches these trials next, as jobs job_idx, job_idx + 1, ...
        for i, trial in enumerate(trials):
            trial.set_user_attr(JOB_ATTR, self.job_idx + i)
        return overrides
