"""The debug presets through the real command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these tiny nets gain nothing from two, and two threads that share the cores with other
    jobs wait on each other (50 overfitting steps: 2 s instead of 40 s on this 2-core VM under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_overfit_drives_the_training_loss_near_zero(tmp_path: Path, cache_dir: Path) -> None:
    from brats_lightning.config import compose
    from brats_lightning.training.train import train

    out = tmp_path / "run"
    cfg = compose(["debug=overfit", f"paths.cache_dir={cache_dir}"], output_dir=str(out))
    n_epochs, n_batches = cfg.trainer.max_epochs, cfg.trainer.overfit_batches
    train(cfg)
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    steps = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    epochs = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    # the same few batches in every epoch, every step logged
    assert n_batches == 2 and len(steps) == n_epochs * n_batches and len(epochs) == n_epochs
    assert epochs[0] > 0.5, epochs[:3]
    assert epochs[-1] < 0.05 and steps[-1] < 0.05, (epochs[-5:], steps[-5:])


def test_profiler_writes_its_report_into_the_run_folder(tmp_path: Path, cache_dir: Path) -> None:
    from brats_lightning.config import compose
    from brats_lightning.training.train import train

    out = tmp_path / "run"
    overrides = ["debug=profiler", "model.width=0.25", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    train(compose([*overrides, f"paths.cache_dir={cache_dir}"], output_dir=str(out)))
    fit = (out / "fit-profiler.txt").read_text()
    assert "FIT Profiler Report" in fit
    assert "run_training_batch" in fit and "training_step" in fit and "optimizer_step" in fit
    assert "test_step" in (out / "test-profiler.txt").read_text()


def test_fast_dev_run_runs_one_batch_of_each_and_exits_0(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "brats_lightning",
            "debug=fdr",
            "model.width=0.25",
            f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es)" in proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/steps"] == 1.0  # one training batch
    assert len(list(csv.DictReader((run / "val_curve.csv").open()))) == 1  # one validation epoch
    assert json.loads((run / "summary.json").read_text())["n_cases"] == 1  # one test batch: one case
    # fast_dev_run turns checkpoints and the metrics logger off
    assert not (run / "checkpoints").exists() and not (run / "csv" / "metrics.csv").exists()
