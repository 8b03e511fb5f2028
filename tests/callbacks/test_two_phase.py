"""Two-phase training: phase 2 trains only the output layer on natural sampling, and survives resumes."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from brats_lightning.callbacks.checkpoint import final_best_checkpoint
from brats_lightning.callbacks.two_phase import TwoPhaseTraining
from brats_lightning.config import compose
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.modules.patch import PatchCNNModule


class Snapshots(pl.Callback):
    """Parameters at the start and end of every training epoch, and the sampling in force."""

    def __init__(self) -> None:
        self.start: dict[int, dict[str, torch.Tensor]] = {}
        self.end: dict[int, dict[str, torch.Tensor]] = {}
        self.distribution: dict[int, str] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.net.named_parameters()}
        self.distribution[trainer.current_epoch] = trainer.datamodule.patch_distribution

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.net.named_parameters()}


def _dm(kwargs: dict) -> BratsDataModule:
    return BratsDataModule(mode="patches", patches_per_epoch=48, **{**kwargs, "batch_size": 16})


def _ckpt(dirpath: Path) -> list[pl.Callback]:
    """The checkpoint callbacks of ``callbacks=two_phase`` (the real config), writing into ``dirpath``."""
    cfg = compose(["model=twopath"], output_dir=str(dirpath.parent))
    return [
        instantiate(v, dirpath=str(dirpath))
        for k, v in cfg.callbacks.items()
        if k in ("model_checkpoint", "phase1_checkpoint", "last_checkpoint")
    ]


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


OUTPUT = {"output.weight", "output.bias"}


def test_phase2_trains_only_the_output_layer_on_natural_sampling(
    tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer
) -> None:
    snaps = Snapshots()
    two = TwoPhaseTraining(phase1_epochs=1, phase2_epochs=1)
    model = PatchCNNModule("twopath", 4, 4, inference_batch_size=8, test_hd95=False)
    trainer = tiny_trainer(tmp_path, 5, [*_ckpt(tmp_path), two, snaps])
    trainer.fit(model, datamodule=_dm(tiny_dm_kwargs))
    assert trainer.current_epoch == 2  # stopped after one phase-2 epoch although max_epochs=5
    assert snaps.distribution == {0: "balanced", 1: "natural"}
    phase1 = _changed(snaps.start[0], snaps.end[0])
    phase2 = _changed(snaps.start[1], snaps.end[1])
    assert phase1 > OUTPUT and len(phase1) == len(snaps.start[0])  # every layer trains in phase 1
    assert phase2 == OUTPUT
    phase1 = torch.load(tmp_path / "phase1_best.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    assert phase1["epoch"] == 0 and best["epoch"] == 1  # the best of each phase, whatever the scores
    assert final_best_checkpoint(trainer) == str(tmp_path / "best.ckpt")


def test_resume_in_phase2_stays_frozen(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    # A run "killed" after its first phase-2 epoch (max_epochs cuts it), resumed from last.ckpt.
    model = PatchCNNModule("localpath", 4, 4, inference_batch_size=8, test_hd95=False)
    tiny_trainer(tmp_path, 2, [*_ckpt(tmp_path), TwoPhaseTraining(phase1_epochs=1, phase2_epochs=3)]).fit(
        model, datamodule=_dm(tiny_dm_kwargs)
    )
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    saved = [v for k, v in state["callbacks"].items() if "TwoPhaseTraining" in k][0]
    assert saved["phase"] == 2 and saved["switch_epoch"] == 1

    snaps = Snapshots()
    two = TwoPhaseTraining(phase1_epochs=1, phase2_epochs=3)
    fresh = PatchCNNModule("localpath", 4, 4, inference_batch_size=8, test_hd95=False)
    dm = _dm(tiny_dm_kwargs)
    trainer = tiny_trainer(tmp_path / "resumed", 3, [*_ckpt(tmp_path / "resumed"), two, snaps])
    trainer.fit(fresh, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert two.phase == 2 and list(snaps.start) == [2]
    assert snaps.distribution[2] == "natural"
    assert _changed(snaps.start[2], snaps.end[2]) == OUTPUT
    # resumed weights are the checkpoint's, not the fresh initialisation
    torch.testing.assert_close(
        snaps.start[2]["local.conv1.conv.weight"], state["state_dict"]["net.local.conv1.conv.weight"]
    )


def test_resume_in_phase1_switches_later(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    model = PatchCNNModule("globalpath", 4, 4, inference_batch_size=8, test_hd95=False)
    tiny_trainer(tmp_path, 1, [*_ckpt(tmp_path), TwoPhaseTraining(phase1_epochs=2, phase2_epochs=1)]).fit(
        model, datamodule=_dm(tiny_dm_kwargs)
    )
    snaps = Snapshots()
    two = TwoPhaseTraining(phase1_epochs=2, phase2_epochs=1)
    trainer = tiny_trainer(tmp_path / "resumed", 5, [*_ckpt(tmp_path / "resumed"), two, snaps])
    trainer.fit(
        PatchCNNModule("globalpath", 4, 4, inference_batch_size=8, test_hd95=False),
        datamodule=_dm(tiny_dm_kwargs),
        ckpt_path=tmp_path / "last.ckpt",
    )
    assert snaps.distribution == {1: "balanced", 2: "natural"}
    assert len(_changed(snaps.start[1], snaps.end[1])) > 2
    assert _changed(snaps.start[2], snaps.end[2]) == OUTPUT
