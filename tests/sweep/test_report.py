"""brats_lightning.sweep.report: the report of a sweep folder."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from brats_lightning.sweep.report import main
from tests.helpers import requires_sweep_extra, run_argv, sweep_extra_missing

#: a sweep of 4 tiny trials on the synthetic data (debug=default's sizes, a quarter-width FCN: the example's own)
SWEEP_ARGS = [
    "-m",
    "hparams_search=synthetic_example",
    "hydra.sweeper.n_trials=4",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "logger=none",
]


#: one torch thread per process: tiny nets gain nothing from two, which wait on each other when jobs share the cores
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _complete(db: Path) -> int:
    """COMPLETE trials in the study file (0 before it exists); read while the sweep writes it."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return int(con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0])
    except sqlite3.OperationalError:  # no file or no table yet
        return 0


@requires_sweep_extra
def test_report_of_a_single_trial_says_importances_need_two(tmp_path: Path) -> None:
    import optuna

    from brats_lightning.sweep.report import report

    study = optuna.create_study(study_name="one", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0) ** 2, n_trials=1)
    text = report(tmp_path)
    assert "1 complete, 0 failed, 0 running; minimising objective" in text
    assert "need at least 2 complete trials (1 so far)" in text
    assert (tmp_path / "optuna_report.png").is_file()


def test_report_of_a_folder_without_a_study_is_one_line(tmp_path: Path) -> None:
    proc = run_argv(main, str(tmp_path))
    missing = sweep_extra_missing()
    expected = (
        missing.replace("hparams_search", "the sweep report")
        if missing
        else (f"{tmp_path}: no optuna.db; give the folder of a sweep (outputs/<task>/sweeps/<study>)")
    )
    assert proc.code == 2
    assert proc.err.strip().splitlines() == [f"error: {expected}"]
