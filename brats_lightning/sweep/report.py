"""The report of a sweep: ``python -m brats_lightning.sweep <sweep folder> [--top K] [--study NAME]`` prints the
best trials (objective, parameters, job folder) and each parameter's importance (Optuna's fANOVA), and writes
Optuna's plots into the folder: ``optuna_report.png`` (the objective per trial, the best so far) and
``optuna_importances.png``. The study is
read as data: nothing named in it is imported or called. ``--reestimate`` trains the best trial's options again with
another seed: the best figure of a sweep is selected, so optimistic.
"""

from __future__ import annotations

import math
import re
import sqlite3
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from brats_lightning.errors import ConfigError, cli
from brats_lightning.files import atomic_path, write_text_atomic
from brats_lightning.schema import validate
from brats_lightning.sweep.study import (
    DB_NAME,
    IMPORTANCE_PNG,
    JOB_ATTR,
    OBJECTIVE_ATTR,
    REPORT_PNG,
    require_sweep_extra,
)

__all__ = ["main", "open_study", "param_importances", "reestimate", "report"]


def open_study(folder: Path, study_name: str | None = None) -> Any:
    """The Optuna study of a sweep folder (its ``optuna.db``), read only as data.

    Raises:
        UserError: no study file there, a file that is not an Optuna study, or no such study in it.
    """
    require_sweep_extra("the sweep report")
    import optuna

    db = folder / DB_NAME
    if not db.is_file():
        raise ConfigError(f"{folder}: no {DB_NAME}; give the folder of a sweep (outputs/<task>/sweeps/<study>)")
    try:  # read-only: a file that is not a study is left as it is (Optuna would create its tables in it)
        with sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{db}: not an SQLite database ({e})") from None
    if not {"studies", "trials"} <= tables:
        raise ConfigError(f"{db}: not an Optuna study (no studies/trials tables)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    if study_name is None:
        study_name = folder.name if folder.name in names else names[0] if len(names) == 1 else None
    if study_name is None or study_name not in names:
        raise ConfigError(f"{db}: holds the studies {names}; choose one with --study NAME")
    return optuna.load_study(study_name=study_name, storage=storage)


def param_importances(study: Any) -> tuple[dict[str, float], str]:
    """Each parameter's importance for the objective (Optuna's own fANOVA evaluator, its default), and a note.

    At least 2 complete trials with different objective values are needed; otherwise the importances are
    empty and the note says why.
    """
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"parameter importances need at least 2 complete trials ({len(done)} so far)"
    if len({t.value for t in done}) < 2:
        return {}, f"parameter importances need different objective values (all {len(done)} trials: {done[0].value:g})"
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as e:
        return {}, f"parameter importances: {e}"
    return {str(k): float(v) for k, v in found.items()}, (
        f"parameter importances over {len(done)} complete trials (Optuna's fANOVA evaluator)"
    )


def _job_folder(folder: Path, trial: Any) -> str:
    job = trial.user_attrs.get(JOB_ATTR)
    if not isinstance(job, int):
        return "-"
    for p in sorted(folder.iterdir()):
        m = re.match(r"(\d+)(?!\d)", p.name)
        if p.is_dir() and m and int(m.group(1)) == job:
            return str(p)
    return f"job {job} (no folder)"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plots(study: Any, objective: str, importances: dict[str, float], folder: Path) -> list[Path]:
    """Optuna's own matplotlib plots of the study: the objective per trial with the best so far
    (``optuna_report.png``) and, when they can be computed, the parameters' importances (``optuna_importances.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    plots: list[tuple[str, Callable[[Any], Any]]] = [(REPORT_PNG, optuna_plots.plot_optimization_history)]
    if importances:
        plots.append((IMPORTANCE_PNG, optuna_plots.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore", ExperimentalWarning)
            ax = plot(study)
        if name == REPORT_PNG:
            ax.set_ylabel(objective)
            ax.set_title(f"{study.study_name}: {objective} per trial ({study.direction.name.lower()})")
        else:
            ax.set_title(f"{study.study_name}: importance for {objective} (fANOVA)")
        fig = cast(Figure, ax.figure)
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        path = folder / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written


def report(folder: Path, top: int = 5, study_name: str | None = None) -> str:
    """The best trials and the parameters' importances of a sweep folder's study, as text; writes the plot.

    Raises:
        UserError: not a sweep folder, or a study with several objectives.
    """
    study = open_study(folder, study_name)  # checks the extra first
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        raise ConfigError(
            f"{folder}: study {study.study_name!r} has {len(study.directions)} objectives; this report reads one"
        )
    objective = str(study.user_attrs.get(OBJECTIVE_ATTR) or "objective")
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)}
    maximize = study.direction.name == "MAXIMIZE"
    lines = [
        f"Study {study.study_name} ({folder / DB_NAME}): {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running; "
        f"{'maximising' if maximize else 'minimising'} {objective}"
    ]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and not math.isnan(t.value)]
    done.sort(key=lambda t: -t.value if maximize else t.value)
    if done:
        lines.append(f"Best trials (of {len(done)}):")
        lines.append(f"{'rank':>4}  {'trial':>5}  {objective:>14}  parameters; job folder")
        for rank, t in enumerate(done[: max(1, top)], 1):
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(t.params.items()))
            lines.append(f"{rank:>4}  {t.number:>5}  {t.value:>14.4f}  {params}; {_job_folder(folder, t)}")
        lines.append(
            f"The best {objective} ({done[0].value:.4f}, trial {done[0].number}) is selected: the best of "
            f"{len(done)} trials scored on the same cases, so biased upward (optimistic). For an estimate of it, "
            f"run the best trial again with another seed: python -m brats_lightning.sweep {folder} --reestimate"
        )
    else:
        lines.append("No complete trial yet.")
    importances, note = param_importances(study)
    lines.append(note[:1].upper() + note[1:] + (":" if importances else ""))
    lines += [f"  {name:<32} {value:.3f}" for name, value in importances.items()]
    lines.append("Plots (Optuna's): " + ", ".join(str(p) for p in _plots(study, objective, importances, folder)))
    return "\n".join(lines)


#: override keys a job's overrides.yaml may not set when a trial is run again (they would name code to call)
_SPECIAL = re.compile(r"(^|\.)_(target|partial|args|recursive|convert)_($|\.)")


def _checked_overrides(path: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml`` read as data: a list of plain ``key=value`` options.

    Raises:
        ConfigError: naming the file, when it is not such a list, or an option names code or interpolates.
    """
    from brats_lightning.schema import read_yaml

    overrides = read_yaml(path, "job's overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{path}: not a list of key=value overrides")
    for o in overrides:
        key, _, value = o.partition("=")
        if _SPECIAL.search(key.lstrip("+~")) or "${" in value:
            raise ConfigError(f"{path}: {o!r} names code or interpolates; it is not run")
    return overrides


def reestimate(folder: Path, study_name: str | None = None, seed: int | None = None) -> tuple[float, float, Path]:
    """Run the best trial of a sweep again with another seed (a fresh training, or a fresh cross-validation for
    ``real_fast``), for an estimate of what its options give that was not selected on the figure itself.

    The trial's options are its job's ``.hydra/overrides.yaml``, read as data: a list of ``key=value`` strings,
    none naming code (``_target_``) or interpolating (``${...}``); they are composed with this package's configs.

    Returns:
        The selected figure, the re-estimated one, and the new run's folder (``<folder>/reestimate/...``).

    Raises:
        UserError: no complete trial, its job folder is missing, or its overrides are not plain options.
    """
    from brats_lightning.config import compose
    from brats_lightning.training.train import run

    study = open_study(folder, study_name)
    objective = str(study.user_attrs.get(OBJECTIVE_ATTR) or "")
    best = study.best_trial
    job = _job_folder(folder, best)
    overrides_file = Path(job) / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ConfigError(f"{folder}: the best trial's job folder (trial {best.number}) has no {overrides_file.name}")
    overrides = _checked_overrides(overrides_file)
    new_seed = seed if seed is not None else int(best.params.get("seed", 0)) + 1000 + best.number
    out = folder / "reestimate" / f"trial_{best.number}_seed_{new_seed}"
    rerun = [o for o in overrides if not o.startswith("seed=")] + [f"seed={new_seed}"]
    cfg = compose(rerun, output_dir=str(out))
    # where Hydra would keep them (``.hydra/``), so the re-run reads like any job of the sweep
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    saved = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    write_text_atomic(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(saved))
    write_text_atomic(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(rerun)))
    results = run(cfg)
    fresh = results.get(objective)
    if fresh is None:
        raise ConfigError(f"{out}: the re-run did not give {objective}")
    return float(best.value), float(fresh), out


@cli
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m brats_lightning.sweep <sweep folder> [--top K] [--study NAME] [--reestimate]``: print the
    report (and run the best trial again with another seed)."""
    from brats_lightning.options import ArgumentParser, SweepReportOptions  # (its schemas import torch: only here)

    parser = ArgumentParser(
        prog="python -m brats_lightning.sweep",
        description="Best trials and parameter importances of a hyper-parameter search (hparams_search=...), "
        f"and Optuna's plots ({REPORT_PNG}, {IMPORTANCE_PNG}) in its folder.",
    )
    parser.add_argument("folder", type=Path, help="the sweep folder (outputs/<task>/sweeps/<study>)")
    parser.add_argument("--top", type=int, default=5, help="best trials shown (default 5)")
    parser.add_argument("--study", default=None, help="the study, when the folder's optuna.db holds several")
    parser.add_argument(
        "--reestimate",
        action="store_true",
        help="run the best trial again with another seed (its selected figure is optimistic) and print both",
    )
    args = parser.parse_args(argv)
    validate(SweepReportOptions, {**vars(args), "folder": str(args.folder)}, "sweep", ConfigError, options=True)
    print(report(args.folder, args.top, args.study))
    if args.reestimate:
        selected, fresh, out = reestimate(args.folder, args.study)
        print(f"Selected (the best of the sweep, optimistic): {selected:.4f}")
        print(f"Re-estimated (the best trial's options, another seed; {out}): {fresh:.4f} ({fresh - selected:+.4f})")
