"""Multi-process training and prediction that are right: real DDP, 2 gloo processes on the CPU, real commands.

One DDP run serves the training checks: two-phase TwoPathCNN* training on 2 processes, then the test of its best
checkpoint on 3 held-out cases (the distributed sampler pads them to 4 over 2 ranks).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_lightning import predict
from brats_lightning.training.train import main as train_main
from tests.helpers import cli, run_main

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

#: the DDP run's options; the single-process test of its checkpoint uses the same (but the devices)
COMMON = ["debug=default", "model=twopath", "data.test_fraction=0.4", "trainer.precision=32", "logger=none"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str]:
    """The issue's command on 2 processes (the run folder and its log); each rank saves its first batch."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "ddp_probe.py").write_text(PROBE)
    run = tmp / "run"
    proc = cli(
        "brats_lightning",
        *COMMON,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"paths.cache_dir={cache_dir}",
        "+callbacks.probe._target_=ddp_probe.FirstBatch",
        f"+callbacks.probe.out={tmp}",
        f"hydra.run.dir={run}",
        env={"PYTHONPATH": str(tmp)},
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return run, log


def test_two_phase_patch_training_on_two_processes(ddp_run: tuple[Path, str]) -> None:
    """Both phases finish, and the two ranks train on different patches."""
    run, log = ddp_run
    assert "Starting with 2 processes" in log or "distributed_backend=gloo" in log
    assert "phase 1 ended after epoch 0" in log and "Epoch 1: phase 2" in log
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    phase = next(v for k, v in last["callbacks"].items() if "TwoPhaseTraining" in k)
    assert last["epoch"] == 1 and phase == {**phase, "phase": 2, "switch_epoch": 1}
    r0, r1 = (torch.load(run.parent / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0[0].shape == r1[0].shape == (4, 4, 33, 33)  # debug batches of 4 patches
    assert not torch.equal(r0[0], r1[0])  # every rank draws its own patches


def test_ddp_counts_every_case_once(ddp_run: tuple[Path, str], tmp_path: Path, cache_dir: Path) -> None:
    """The DDP run's test metrics equal the single-process test of the same checkpoint, each case once."""
    run, _ = ddp_run
    tested = json.loads((run / "summary.json").read_text())["checkpoint"]
    single = tmp_path / "single"
    run_main(train_main, *COMMON, "train=false", f"ckpt_path={tested}", f"paths.cache_dir={cache_dir}",
             f"hydra.run.dir={single}")  # fmt: skip
    one = list(csv.DictReader((single / "per_case.csv").open()))
    ddp = list(csv.DictReader((run / "per_case.csv").open()))
    assert len(one) == 9  # 3 test cases x 3 regions: the distributed sampler's padding counted nowhere
    assert [(r["case"], r["region"]) for r in ddp] == [(r["case"], r["region"]) for r in one]
    for a, b in zip(one, ddp):
        for m in ("dice", "sensitivity", "specificity", "ppv"):
            assert float(a[m]) == pytest.approx(float(b[m]), abs=1e-6)
    ms, md = (json.loads((d / "metrics.json").read_text()) for d in (single, run))
    assert md["test/dice_mean"] == pytest.approx(ms["test/dice_mean"], abs=1e-6)


def test_predict_over_two_processes_does_each_case_once(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    """predict devices=2 (Lightning's DDP and its unrepeated sampler) writes what one process writes."""
    common = [f"ckpt_path={trained_ckpt}", f"input_dir={synthetic_root}", "device=cpu"]
    run_main(predict.main, *common, f"output_dir={tmp_path / 'one'}", f"hydra.run.dir={tmp_path / 'run_one'}")
    proc = cli("brats_lightning.predict", *common, "devices=2", f"output_dir={tmp_path / 'two'}",
               f"hydra.run.dir={tmp_path / 'run_two'}")  # fmt: skip
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
