"""The report of a sweep: ``python -m brats_lightning.sweep <sweep folder> [--top K] [--study NAME]`` prints the
best trials (objective, parameters, job folder) and each parameter's importance, and writes
``optuna_report.png`` (the objective per trial, the best so far, the importances) into the folder. The study is
read as data: nothing named in it is imported or called.
"""

from __future__ import annotations

import argparse
import math
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brats_lightning.errors import ConfigError, cli
from brats_lightning.files import atomic_path
from brats_lightning.sweep.study import DB_NAME, JOB_ATTR, OBJECTIVE_ATTR, REPORT_PNG, require_sweep_extra

__all__ = ["main", "open_study", "param_importances", "report"]


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
    """Each parameter's importance for the objective (Optuna's mean decrease in impurity), and a note.

    At least 2 complete trials with different objective values are needed; otherwise the importances are
    empty and the note says why. (Optuna 2's default fANOVA evaluator fails with NumPy 2.)
    """
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"parameter importances need at least 2 complete trials ({len(done)} so far)"
    if len({t.value for t in done}) < 2:
        return {}, f"parameter importances need different objective values (all {len(done)} trials: {done[0].value:g})"
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as e:
        return {}, f"parameter importances: {e}"
    return {str(k): float(v) for k, v in found.items()}, (
        f"parameter importances over {len(done)} complete trials (mean decrease in impurity of a random forest)"
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


def _plot(study: Any, objective: str, importances: dict[str, float], note: str, path: Path) -> Path:
    """Objective per trial with the best so far, and the importances, as a PNG (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    maximize = study.direction.name == "MAXIMIZE"
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, width_ratios=[3, 2])
    if done:
        x = [t.number for t in done]
        y = [float(t.value) for t in done]
        best = [max(y[: i + 1]) if maximize else min(y[: i + 1]) for i in range(len(y))]
        ax.scatter(x, y, s=22, color="tab:blue", label="trial", zorder=3)
        ax.step(x, best, where="post", color="tab:red", label="best so far")
        ax.legend(loc="best")
    failed = [t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.COMPLETE]
    for number in failed:
        ax.axvline(number, color="0.8", lw=0.8, zorder=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (grey: failed or unfinished)" if failed else "trial")
    ax.set_ylabel(objective)
    ax.set_title(f"{study.study_name}: {len(done)} complete trials ({'max' if maximize else 'min'}imised)")
    if importances:
        names = list(importances)[::-1]
        bx.barh(names, [importances[n] for n in names], color="tab:green")
        bx.set_xlabel("importance")
        bx.set_title("parameter importances")
    else:
        bx.axis("off")
        bx.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


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
    else:
        lines.append("No complete trial yet.")
    importances, note = param_importances(study)
    lines.append(note[:1].upper() + note[1:] + (":" if importances else ""))
    lines += [f"  {name:<32} {value:.3f}" for name, value in importances.items()]
    png = _plot(study, objective, importances, note, folder / REPORT_PNG)
    lines.append(f"Plot: {png}")
    return "\n".join(lines)


@cli
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m brats_lightning.sweep <sweep folder> [--top K] [--study NAME]``: print the report."""
    parser = argparse.ArgumentParser(
        prog="python -m brats_lightning.sweep",
        description="Best trials and parameter importances of a hyper-parameter search (hparams_search=...), "
        f"and {REPORT_PNG} in its folder.",
    )
    parser.add_argument("folder", type=Path, help="the sweep folder (outputs/<task>/sweeps/<study>)")
    parser.add_argument("--top", type=int, default=5, help="best trials shown (default 5)")
    parser.add_argument("--study", default=None, help="the study, when the folder's optuna.db holds several")
    args = parser.parse_args(argv)
    print(report(args.folder, args.top, args.study))
