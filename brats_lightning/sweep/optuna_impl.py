"""The search loop of the resumable sweeper, on Hydra's public ``Sweeper`` API and Optuna's ask-and-tell interface.

Imported once the ``sweep`` extra has been checked (:func:`~brats_lightning.sweep.study.require_sweep_extra`). Hydra
gives the sweeper its launcher (``Plugins.instantiate_launcher``: the basic one runs the jobs one after the other,
``hydra/launcher=slurm`` submits them); the loop asks Optuna for ``n_jobs`` trials, launches them as one batch of
jobs numbered on from the study's last, and tells Optuna each job's objective. Before it starts,
:func:`~brats_lightning.sweep.study.resume_study` marks the trials a killed sweep left running as failed and counts the
complete ones: only the missing trials run, and a seeded sampler continues its seed.

The search space is Hydra's sweep syntax, from ``hydra.sweeper.params`` and the command line alike:
``interval(a, b)`` (a float or an integer range), ``tag(log, interval(a, b))`` (on a log scale),
``range(a, b, step)`` and ``choice(x, y, ...)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from brats_lightning.errors import ConfigError
from brats_lightning.files import write_text_atomic
from brats_lightning.sweep.study import JOB_ATTR, build_sampler, resume_study, study_lock

__all__ = ["ResumableOptunaSweeperImpl", "distribution", "search_space"]

log = logging.getLogger("brats_lightning.sweep.study")
RESULTS_FILE = "optimization_results.yaml"


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``interval``, ``tag(log, interval)``, ``range``, ``choice``).

    Raises:
        ConfigError: a sweep Optuna cannot sample (naming the parameter).
    """
    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        choices: list[Any] = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        start, stop, step = value.start, value.stop, value.step
        if start is None or stop is None or step is None or step <= 0 or stop <= start:
            raise ConfigError(f"hydra.sweeper.params.{key}: range needs start < stop and a positive step")
        # Hydra's range excludes its stop; Optuna's high is the last value taken
        last = start + step * (math.ceil((stop - start) / step - 1e-9) - 1)
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        low, high, log_scale = value.start, value.end, "log" in value.tags
        if low is None or high is None or not low < high:
            raise ConfigError(f"hydra.sweeper.params.{key}: interval needs low < high, got ({low}, {high})")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise ConfigError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not a sweep Optuna can sample")


def search_space(params: dict[str, str], arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions of the sweep's parameters and the fixed overrides of every job.

    Args:
        params: ``hydra.sweeper.params`` (key -> sweep string).
        arguments: the command line's overrides (a sweep there joins the search space; the others are fixed).
    """
    parser = OverridesParser.create()
    # the command line wins over hydra.sweeper.params for the same key (a fixed value, or another sweep)
    by_key: dict[str, Override] = {}
    for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()]) + parser.parse_overrides(list(arguments)):
        by_key.pop(o.get_key_element(), None)
        by_key[o.get_key_element()] = o
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for key, o in by_key.items():
        if o.is_sweep_override():
            space[key] = distribution(o)
        else:
            fixed.append(o.input_line or f"{key}={o.get_value_element_as_str()}")
    if not space:
        raise ConfigError(
            "hydra.sweeper.params: no parameter to search (e.g. model.lr: tag(log, interval(1e-4, 1e-2)))"
        )
    return space, fixed


class ResumableOptunaSweeperImpl:
    """The sweep: a study continued across runs of the same command (see the module docstring).

    Args:
        sampler: the sampler's config (built per sweep: a resumed one continues its seed).
        direction: ``maximize`` or ``minimize`` (a list for several objectives).
        storage: the study's storage URL (``sqlite:///<sweep folder>/optuna.db``).
        study_name: the study's name.
        n_trials: complete trials the study should hold.
        n_jobs: trials asked for, and launched, at once.
        max_failure_rate: share of failed trials tolerated before the sweep stops.
        params: the search space, in Hydra's sweep syntax.
        search_space: refused (Optuna 2's form; use ``params``).
        custom_search_space: refused (it would import code named in a config; use ``params``).
    """

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Any = None,
        search_space: Any = None,
        custom_search_space: str | None = None,
    ) -> None:
        for name, value in (("search_space", search_space), ("custom_search_space", custom_search_space)):
            if value:
                raise ConfigError(
                    f"hydra.sweeper.{name} is not supported: give the search space as hydra.sweeper.params"
                )
        if int(n_trials) < 0 or int(n_jobs) < 1 or not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ConfigError(
                "hydra.sweeper: n_trials must be >= 0, n_jobs >= 1 and max_failure_rate in [0, 1], got "
                f"{n_trials}, {n_jobs}, {max_failure_rate}"
            )
        self.sampler_config = sampler
        directions = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
        if not directions or any(str(d) not in ("maximize", "minimize") for d in directions):
            raise ConfigError(
                f"hydra.sweeper.direction must be maximize or minimize (or a list of them), got {direction}"
            )
        self.directions = [str(d) for d in directions]
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = int(n_trials), int(n_jobs), float(max_failure_rate)
        plain: Any = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.params = {str(k): str(v) for k, v in (plain or {}).items()}
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hydra's ``Sweeper.setup``: keep the config and build the launcher."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run the trials the study lacks (see the module docstring).

        Raises:
            ConfigError: no study name or storage, a test figure as the objective, a study started with other
                overrides, or more failed trials than ``max_failure_rate`` allows.
        """
        assert self.config is not None and self.launcher is not None
        if not self.storage or not self.study_name:
            raise ConfigError(
                "hydra.sweeper.storage and hydra.sweeper.study_name must be set: the study they name is what a "
                "resumed sweep continues"
            )
        objective = str(self.config.get("optimized_metric") or "")
        if not objective or objective.startswith("test/"):
            raise ConfigError(
                f"optimized_metric={objective or 'null'}: a hyper-parameter search maximises a validation or "
                "out-of-fold figure, never a test figure (e.g. optimized_metric=val/best_dice_mean)"
            )
        space, fixed = search_space(self.params, arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        with study_lock(sweep_dir):
            point = resume_study(
                str(self.storage),
                str(self.study_name),
                self.directions,
                sweep_dir,
                list(self.config.hydra.overrides.task),
                objective,
            )
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(
                study_name=str(self.study_name),
                storage=str(self.storage),
                sampler=build_sampler(self.sampler_config, point.trials),
            )
            left = max(0, self.n_trials - point.complete)
            self.job_idx = point.next_job
            if point.trials:
                log.info(
                    "Resuming study %s: %d complete of %d trials%s; %d to run, jobs from %d on",
                    self.study_name,
                    point.complete,
                    point.trials,
                    f", killed trials {list(point.marked_failed)} marked failed" if point.marked_failed else "",
                    left,
                    point.next_job,
                )
            if not left:
                log.info(
                    "Study %s already holds %d complete trials (n_trials=%d)",
                    self.study_name,
                    point.complete,
                    self.n_trials,
                )
            self._run(study, space, fixed, left)
            self._write_results(study, sweep_dir)

    def _run(self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: list[str], left: int) -> None:
        assert self.launcher is not None
        launched = failed = 0
        while launched < left:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left - launched))]
            for i, trial in enumerate(trials):
                trial.set_user_attr(JOB_ATTR, self.job_idx + i)
            batch = [
                tuple(f"{key}={_override_value(trial.params[key])}" for key in space) + tuple(fixed) for trial in trials
            ]
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(batch)
            launched += len(batch)
            for trial, job in zip(trials, returns):
                try:
                    values = job.return_value  # re-raises the job's exception when it failed
                    study.tell(trial, _objective_values(values, len(self.directions)))
                except Exception as e:  # noqa: BLE001 - a failed trial is recorded, the sweep goes on
                    failed += 1
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning("Trial %d failed: %s: %s", trial.number, type(e).__name__, e)
                    if failed / launched > self.max_failure_rate:
                        raise ConfigError(
                            f"{failed} of {launched} trials failed, above hydra.sweeper.max_failure_rate="
                            f"{self.max_failure_rate} (the last: {type(e).__name__}: {e})"
                        ) from None

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done or len(self.directions) > 1:
            return
        best = study.best_trial
        doc = {"name": "optuna", "best_params": dict(best.params), "best_value": float(best.values[0])}
        write_text_atomic(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(doc)))
        log.info("Best trial %d of study %s: %s = %s", best.number, self.study_name, doc["best_params"], best.value)


def _override_value(value: Any) -> str:
    """A sampled value as a Hydra override value (strings quoted when they would not parse as themselves)."""
    if isinstance(value, str):
        return value
    return repr(value) if isinstance(value, float) else str(value)


def _objective_values(values: Any, n: int) -> float | list[float]:
    """The job's return value as the study's objective(s).

    Raises:
        ValueError: not a number (or not ``n`` numbers), or not finite.
    """
    seq = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(seq) != n:
        raise ValueError(f"the job returned {values!r}; the study has {n} objective(s)")
    out = [float(v) for v in seq]
    if any(v != v or v in (float("inf"), float("-inf")) for v in out):
        raise ValueError(f"the job returned {values!r}, not a finite objective")
    return out[0] if n == 1 else out
