"""Resumable hyper-parameter search (``hparams_search=<name>``) and its report.

``python -m brats_lightning hparams_search=synthetic_example`` runs an Optuna study (TPE) through this package's
Hydra sweeper (:mod:`brats_lightning.sweep.optuna_impl`: Hydra's public ``Sweeper`` API, Optuna's ask-and-tell; the
``sweep`` extra: ``pip install -c constraints.txt -e ".[sweep]"``). The study is
an SQLite file in the sweep folder, ``outputs/<task>/sweeps/<study_name>/optuna.db``, beside one folder per
trial named by its job number (``0``, ``1``, ...). Running the same command again continues a sweep that was
killed or stopped (:func:`resume_study`):

* trials a killed sweep left ``RUNNING`` are marked ``FAIL`` (their job folders stay as they are);
* only ``n_trials`` less the trials already ``COMPLETE`` run (a larger ``hydra.sweeper.n_trials`` extends it);
* new job folders are numbered after every existing one: none is overwritten;
* a seeded sampler continues with ``seed + trials so far`` instead of drawing its first trials again.

One sweep of a folder runs at a time (a lock file there, released by the system if the sweep is killed), and a
study refuses a command whose overrides differ from the ones it started with: another data set or budget is
another study (``hydra.sweeper.study_name=...``).

``python -m brats_lightning.sweep <sweep folder>`` reports on a sweep (:mod:`brats_lightning.sweep.report`).

Hydra instantiates sweepers only from the ``hydra_plugins`` package: the sweeper's entry point is
``hydra_plugins.brats_lightning_sweeper`` (``conf/hydra/sweeper/resumable_optuna.yaml``), which checks the
extra here (:func:`require_sweep_extra`) before it imports anything of it.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from brats_lightning.errors import ConfigError, OutputError, UserError, output_error

__all__ = [
    "EXTRA_INSTALL",
    "MissingExtraError",
    "ResumePoint",
    "require_sweep_extra",
    "sqlite_path",
    "existing_jobs",
    "study_lock",
    "resume_study",
    "build_sampler",
]

log = logging.getLogger("brats_lightning.sweep.study")

#: how to install what a hyper-parameter search needs
EXTRA_INSTALL = 'pip install -c constraints.txt -e ".[sweep]"'
#: the study file in a sweep folder, and the report's figure beside it
DB_NAME = "optuna.db"
REPORT_PNG = "optuna_report.png"
IMPORTANCE_PNG = "optuna_importances.png"
LOCK_NAME = ".sweep.lock"
#: the oldest Optuna the sweeper is tested with
MIN_OPTUNA = 5
#: user attributes the sweeper writes: the study's command-line overrides and objective, each trial's job number
OVERRIDES_ATTR = "overrides"
OBJECTIVE_ATTR = "objective"
JOB_ATTR = "job"


class MissingExtraError(UserError):
    """A package of the ``sweep`` extra is missing or unusable; the message names it and the install command."""


def _major(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def require_sweep_extra(what: str = "hparams_search") -> None:
    """Check that the ``sweep`` extra is installed and usable (``what`` needs it: named in the message).

    Raises:
        MissingExtraError: one line naming the missing package (or the incompatible pair) and the install command.
    """
    # Optuna's schema migrations (alembic) log every plugin they load at INFO when imported: Hydra would show it
    logging.getLogger("alembic").setLevel(logging.WARNING)
    missing = []
    for module, package in (("optuna", "optuna"), ("sqlalchemy", "SQLAlchemy")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingExtraError(
            f"{what} needs {' and '.join(missing)} (the 'sweep' extra), which is not installed: {EXTRA_INSTALL}"
        )
    import optuna

    if _major(optuna.__version__) < MIN_OPTUNA:
        raise MissingExtraError(
            f"{what} needs optuna>={MIN_OPTUNA}, found {optuna.__version__} (the 'sweep' extra): {EXTRA_INSTALL}"
        )


def sqlite_path(storage: str) -> Path | None:
    """The file of an ``sqlite:///`` storage URL (``None`` for any other storage).

    Examples:
        >>> sqlite_path("sqlite:////tmp/sweep/optuna.db"), sqlite_path("postgresql://db/x")
        (PosixPath('/tmp/sweep/optuna.db'), None)
    """
    prefix = "sqlite:///"
    return Path(storage[len(prefix) :]) if storage.startswith(prefix) else None


def existing_jobs(sweep_dir: Path) -> list[int]:
    """Job numbers of the folders in ``sweep_dir`` whose names start with one (``3``, ``3_model.lr=0.01``)."""
    if not sweep_dir.is_dir():
        return []
    found = (re.match(r"(\d+)(?!\d)", p.name) for p in sweep_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


@contextmanager
def study_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``<sweep_dir>/.sweep.lock`` while a sweep runs (the system releases it when the process dies).

    Raises:
        OutputError: another sweep of this folder is running.
    """
    import fcntl

    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK_NAME
    try:  # never through a link: a lock planted as one would create or lock a file outside the sweep folder
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{path}: is a link, not the sweep's lock file; remove it (rm {path})") from None
        raise output_error(e, path) from None
    with os.fdopen(fd, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{sweep_dir}: another sweep of this study is running (it holds {path}); wait for it or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ResumePoint:
    """Where a study stands when a sweep starts.

    Attributes:
        trials: trials in the study before this sweep, whatever their state.
        complete: those ``COMPLETE``.
        marked_failed: numbers of the trials that were still ``RUNNING`` (killed) and are now ``FAIL``.
        next_job: the first job number of this sweep (after every trial's and every folder's).
    """

    trials: int
    complete: int
    marked_failed: tuple[int, ...]
    next_job: int


def resume_study(
    storage: str,
    study_name: str,
    directions: Sequence[str],
    sweep_dir: Path,
    overrides: Sequence[str],
    objective: str | None = None,
) -> ResumePoint:
    """Create the study, or prepare an existing one to continue (call it holding :func:`study_lock`).

    Trials still ``RUNNING`` belong to a sweep that was killed (the lock says no other is running): they
    are marked ``FAIL``. A new study records ``overrides`` (the command's) and ``objective``.

    Raises:
        ConfigError: the study was started with other overrides.
    """
    import optuna
    from optuna.trial import TrialState

    db = sqlite_path(storage)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=[optuna.study.StudyDirection[str(d).upper()] for d in directions],
        load_if_exists=True,
    )
    attrs = study.user_attrs
    overrides = sorted(str(o) for o in overrides)
    if OVERRIDES_ATTR in attrs:
        before = sorted(str(o) for o in attrs[OVERRIDES_ATTR])
        if before != overrides:
            added, dropped = sorted(set(overrides) - set(before)), sorted(set(before) - set(overrides))
            raise ConfigError(
                f"study {study_name!r} ({storage}) was started with other overrides (added now: {added}, "
                f"missing now: {dropped}): run its own command to continue it, or name this search "
                "hydra.sweeper.study_name=<another name>"
            )
    else:
        study.set_user_attr(OVERRIDES_ATTR, overrides)
        if objective:
            study.set_user_attr(OBJECTIVE_ATTR, objective)
    backend = optuna.storages.get_storage(storage)
    study_id = backend.get_study_id_from_name(study_name)
    trials = backend.get_all_trials(study_id, deepcopy=False)
    stale = [t.number for t in trials if t.state == TrialState.RUNNING]
    for number in stale:
        trial_id = backend.get_trial_id_from_study_id_trial_number(study_id, number)
        backend.set_trial_user_attr(trial_id, "failed", "still running when its sweep was resumed (killed)")
        backend.set_trial_state_values(trial_id, TrialState.FAIL)
    jobs = [t.user_attrs[JOB_ATTR] for t in trials if isinstance(t.user_attrs.get(JOB_ATTR), int)]
    next_job = max([len(trials), *(j + 1 for j in jobs), *(j + 1 for j in existing_jobs(sweep_dir))])
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return ResumePoint(len(trials), complete, tuple(stale), next_job)


def build_sampler(config: Any, trials_so_far: int) -> Any:
    """The Optuna sampler of ``hydra.sweeper.sampler``; a seeded one gets ``seed + trials_so_far`` when
    the study already holds trials, so that a resumed sweep does not propose its first trials again."""
    from hydra.utils import instantiate

    node = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    assert isinstance(node, dict)
    if trials_so_far and node.get("seed") is not None:
        node["seed"] = int(node["seed"]) + trials_so_far
    return instantiate(node)


# ------------------------------------------------------------------------------------------ report
