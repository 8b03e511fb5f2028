"""Multi-process training that is right: real DDP with 2 gloo processes on the CPU, through the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from brats_lightning.data.datamodule import BratsDataModule

PROBE = '''
import torch
import pytorch_lightning as pl


class FirstBatch(pl.Callback):
    """Saves the first training batch each rank sees."""

    def __init__(self, out: str) -> None:
        self.out, self.done = out, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.done:
            torch.save([b.detach().cpu() for b in batch], f"{self.out}/rank{trainer.global_rank}.pt")
            self.done = True
'''


def test_two_phase_patch_training_on_two_processes(tmp_path: Path, cache_dir: Path) -> None:
    """The issue's command finishes both phases, and the two ranks train on different patches."""
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "brats_lightning",
            "debug=default",
            "model=twopath",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32",
            f"paths.cache_dir={cache_dir}",
            "+callbacks.probe._target_=ddp_probe.FirstBatch",
            f"+callbacks.probe.out={tmp_path}",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Starting with 2 processes" in log or "distributed_backend=gloo" in log
    assert "phase 1 ended after epoch 0" in log and "Epoch 1: phase 2" in log
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    phase = next(v for k, v in last["callbacks"].items() if "TwoPhaseTraining" in k)
    assert last["epoch"] == 1 and phase == {**phase, "phase": 2, "switch_epoch": 1}
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0[0].shape == r1[0].shape == (4, 4, 33, 33)  # debug batches of 4 patches
    assert not torch.equal(r0[0], r1[0])  # every rank draws its own patches


def test_patch_batches_are_reproducible_and_differ_by_index(tiny_dm_kwargs: dict) -> None:
    """Batch i of epoch e is a function of (seed, e, i): what a rank draws does not depend on workers or history."""
    dm = BratsDataModule(mode="patches", **{**tiny_dm_kwargs, "batch_size": 16})
    dm.prepare_data()
    dm.setup("fit")
    a, b = dm.train_dataset(), dm.train_dataset()
    x0, y0 = a[(0, 5, "balanced")]
    x1, y1 = b[(0, 5, "balanced")]
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(a[(0, 6, "balanced")][0], x0)  # another index (rank): other patches
    assert not torch.equal(a[(1, 5, "balanced")][0], x0)  # another epoch: other patches
    # a loader with 2 workers gives what the dataset gives, in order
    dm.num_workers = 2
    loader = dm.train_dataloader()
    first = next(iter(loader))
    ref = dm.train_dataset()[(0, 0, "balanced")]
    assert all(torch.equal(u, v) for u, v in zip(first, ref))
    assert np.isclose(float(first[0].float().abs().sum()), float(ref[0].float().abs().sum()))


def test_predict_over_two_processes_does_each_case_once(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    """predict devices=2 (Lightning's DDP and its unrepeated sampler) writes what one process writes."""
    import json

    import nibabel as nib

    common = [
        sys.executable,
        "-m",
        "brats_lightning.predict",
        f"ckpt_path={trained_ckpt}",
        f"input_dir={synthetic_root}",
        "device=cpu",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, extra in (("one", []), ("two", ["devices=2"])):
        proc = subprocess.run(
            [*common, f"output_dir={tmp_path / name}", f"hydra.run.dir={tmp_path / f'run_{name}'}", *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    one = json.loads((tmp_path / "one" / "predict_report.json").read_text())
    two = json.loads((tmp_path / "two" / "predict_report.json").read_text())
    assert sorted(two["done"]) == sorted(one["done"]) and len(one["done"]) == 8 and not two["failed"]
    assert len(two["done"]) == len(set(two["done"]))  # each case once
    for case in one["done"]:
        a = np.asarray(nib.load(tmp_path / "one" / f"{case}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "two" / f"{case}.nii.gz").dataobj)
        assert np.array_equal(a, b), case
    assert set(one["times_s"][one["done"][0]]) >= {"read", "preprocess", "symmetry", "inference", "write", "total"}
