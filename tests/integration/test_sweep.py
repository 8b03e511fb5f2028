"""A killed sweep continues with the same command; without the extra, one line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from brats_lightning.errors import ConfigError
from brats_lightning.sweep.report import reestimate
from brats_lightning.sweep.study import EXTRA_INSTALL
from tests.helpers import ROOT, requires_sweep_extra, run_command

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


def _study(db: Path) -> Any:
    import optuna

    return optuna.load_study(study_name="synthetic_example", storage=f"sqlite:///{db}")


@requires_sweep_extra
def test_a_killed_sweep_continues_to_its_trials_with_the_same_command(tmp_path: Path, cache_dir: Path) -> None:
    from optuna.trial import TrialState

    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "brats_lightning",
        *SWEEP_ARGS,
        f"paths.log_dir={logs}",
        f"paths.cache_dir={cache_dir}",
    ]
    sweep = logs / "train" / "sweeps" / "synthetic_example"  # the stable folder of the study: no date
    db = sweep / "optuna.db"
    with (tmp_path / "first.log").open("w") as out:
        first = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=ONE_THREAD
        )
        try:
            deadline = time.monotonic() + 600
            while _complete(db) < 2:
                assert first.poll() is None, (
                    "the sweep ended before it was killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
                )
                assert time.monotonic() < deadline, "no 2 complete trials in 10 minutes"
                time.sleep(0.05)
            os.killpg(first.pid, signal.SIGKILL)  # the sweep and everything it started
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == -signal.SIGKILL
    before = {t.number: t for t in _study(db).get_trials()}
    done_before = [n for n, t in before.items() if t.state == TrialState.COMPLETE]
    killed = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert 2 <= len(done_before) < 4 and len(killed) <= 1
    folders = {p.name: p for p in sweep.iterdir() if p.is_dir()}
    kept = {
        name: {f: (p / f).read_bytes() for f in (".hydra/overrides.yaml", "metrics.json") if (p / f).is_file()}
        for name, p in folders.items()
    }
    stamps = {name: (p / ".hydra" / "overrides.yaml").stat().st_mtime_ns for name, p in folders.items()}

    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "Resuming study synthetic_example" in second.stdout + second.stderr

    trials = _study(db).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4  # exactly the 4 asked for: only the missing ones ran
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.state == TrialState.FAIL for t in trials if t.number in killed)
    # a trial killed before its job started has no job number; every other has its own
    jobs = [t.user_attrs["job"] for t in trials if "job" in t.user_attrs]
    assert len(set(jobs)) == len(jobs) and all("job" in t.user_attrs for t in complete)
    # the seeded sampler continued its seed: the new trials do not repeat the first ones
    assert not [t for t in complete if t.number not in before and any(t.params == before[n].params for n in before)]
    new_jobs = [t.user_attrs["job"] for t in trials if t.number not in before]
    assert len(new_jobs) == 4 - len(done_before) and min(new_jobs) > max(int(n) for n in folders)
    # the first sweep's job folders were not touched
    for name, files in kept.items():
        assert {f: (sweep / name / f).read_bytes() for f in files} == files
        assert (sweep / name / ".hydra" / "overrides.yaml").stat().st_mtime_ns == stamps[name]
    # every complete trial's value is its job's test Dice
    for t in complete:
        metrics = json.loads((sweep / str(t.user_attrs["job"]) / "metrics.json").read_text())
        assert metrics["val/best_dice_mean"] == pytest.approx(t.value)  # a validation figure, not the test's

    report = subprocess.run(
        [sys.executable, "-m", "brats_lightning.sweep", str(sweep)], capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-3000:]
    best = max(complete, key=lambda t: t.value)
    lines = report.stdout.splitlines()
    assert "4 complete" in lines[0] and "maximising val/best_dice_mean" in lines[0]
    rank1 = lines[[i for i, x in enumerate(lines) if x.startswith("Best trials (of 4)")][0] + 2]
    assert rank1.split()[:3] == ["1", str(best.number), f"{best.value:.4f}"]
    assert rank1.endswith(f"; {sweep / str(best.user_attrs['job'])}")
    assert "Parameter importances over 4 complete trials" in report.stdout
    assert "model.lr" in report.stdout and "data.tumour_fraction" in report.stdout
    assert (sweep / "optuna_report.png").stat().st_size > 10_000
    assert (sweep / "optuna_importances.png").stat().st_size > 10_000
    # the sweep's own summary of its best trial
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(best.value) and results["best_params"] == best.params
    # the best figure is labelled as selected, and --reestimate trains the best trial's options with another seed
    assert f"The best val/best_dice_mean ({best.value:.4f}, trial {best.number}) is selected" in report.stdout
    selected, fresh, out = reestimate(sweep)
    assert selected == pytest.approx(best.value)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/best_dice_mean"] == pytest.approx(fresh)
    assert out.parent == sweep / "reestimate" and out.name.startswith(f"trial_{best.number}_seed_")
    rerun = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    job = yaml.safe_load((sweep / str(best.user_attrs["job"]) / ".hydra" / "config.yaml").read_text())
    assert rerun["seed"] != job["seed"]
    assert rerun["model"] == job["model"] and rerun["data"] == {**job["data"], "cache_dir": rerun["data"]["cache_dir"]}


def test_reestimate_refuses_overrides_that_name_code(tmp_path: Path) -> None:
    from brats_lightning.sweep.report import _checked_overrides

    good = tmp_path / "good.yaml"
    good.write_text("- model.lr=0.01\n- seed=3\n")
    assert _checked_overrides(good) == ["model.lr=0.01", "seed=3"]
    for text in ("- model._target_=os.system\n", "- model.lr=${oc.env:HOME}\n", "model.lr: 1\n", "- 3\n"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match="bad.yaml"):
            _checked_overrides(bad)


@pytest.mark.parametrize("metric", ["test/dice_mean", "null"])
def test_a_sweep_never_maximises_a_test_figure(tmp_path: Path, metric: str) -> None:
    from brats_lightning.training.train import main

    result = run_command(main, *SWEEP_ARGS, f"optimized_metric={metric}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"error: optimized_metric={metric}: a hyper-parameter search maximises a validation or out-of-fold figure, "
        "never a test figure (e.g. optimized_metric=val/best_dice_mean)"
    ]
    assert not list((tmp_path / "logs").rglob("metrics.json"))  # no trial trained


def test_main_returns_the_optimized_metric() -> None:
    from omegaconf import OmegaConf

    from brats_lightning.training.train import optimized_value

    results = {"val/best_dice_mean": 0.5, "test/dice_mean": 0.9}
    assert optimized_value(OmegaConf.create({"optimized_metric": "val/best_dice_mean"}), results) == 0.5
    assert optimized_value(OmegaConf.create({"optimized_metric": None}), results) is None
    assert optimized_value(OmegaConf.create({"optimized_metric": "cv/dice_mean"}), results) is None


def test_without_the_extra_hparams_search_stops_with_one_line(tmp_path: Path) -> None:
    # optuna made unimportable in this process (a None entry in sys.modules), as on an install without the extra
    code = (
        "import sys; sys.modules['optuna'] = None; "
        f"sys.argv = ['brats_lightning', 'hparams_search=synthetic_example', 'paths.log_dir={tmp_path / 'logs'}']; "
        "from brats_lightning.cli import train_command; train_command()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: hparams_search needs optuna (the 'sweep' extra), which is not installed: {EXTRA_INSTALL}"
    ]
    assert not (tmp_path / "logs").exists()  # stopped before any sweep folder or trial
