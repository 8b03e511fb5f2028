"""Havaei et al.'s two-phase training as a Lightning callback (Sec. 3.2, "Two-phase training").

Phase 1 trains the whole net on patches whose labels are equiprobable. Phase 2 re-trains only the
output layer on the natural label distribution, which calibrates the output probabilities and
removes the false positives of phase 1 (the starred rows of Havaei Tables 1-3).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from brats_lightning.data.contract import PatchData
from brats_lightning.nets.twopath import PatchCNN

__all__ = ["TwoPhaseTraining"]

log = logging.getLogger(__name__)


class TwoPhaseTraining(Callback):
    """Switch from balanced to natural patch sampling and freeze all but the output layer.

    The switch happens after ``phase1_epochs`` epochs, or earlier when the monitored validation
    metric has not improved for ``patience`` epochs (early stopping of phase 1). Phase 2 lasts
    ``phase2_epochs`` epochs, then training stops. With ``phase1_epochs=None`` phase 1 takes every
    epoch but the last ``phase2_epochs`` of ``trainer.max_epochs``.

    The phase is part of the checkpoint (:meth:`state_dict`), and the freeze and the sampling are
    re-applied when a run resumes and at every epoch start, so a resumed run continues in the
    phase it was in. "Best" checkpoints are kept per phase by
    :class:`~brats_lightning.callbacks.checkpoint.PhaseCheckpoint` (``callbacks=two_phase``), so the
    reported model is the best phase-2 epoch, as the paper reports its two-phase models.

    The switch reaches the training data at the next epoch: the data module's loader tells every
    batch the distribution in force when the epoch starts (loader workers persist).

    Under DDP, phase 2 leaves parameters without gradients: the strategy must allow unused
    parameters (:attr:`freezes_parameters` tells ``train()`` to choose it).

    The module's net must be a :class:`~brats_lightning.nets.twopath.PatchCNN` (``output_layer()``); the
    data module a :class:`~brats_lightning.data.contract.PatchData` (``set_patch_distribution()``).

    Args:
        phase1_epochs: epochs of phase 1 (``None``: derived from ``max_epochs``).
        phase2_epochs: epochs of phase 2.
        patience: end phase 1 after this many epochs without improvement (``None``: never).
        monitor: validation metric for ``patience``.
        mode: ``"max"`` or ``"min"``.
    """

    #: parameters stop receiving gradients during training (DDP must be told; see ``train()``)
    freezes_parameters = True

    def __init__(
        self,
        phase1_epochs: int | None = None,
        phase2_epochs: int = 1,
        patience: int | None = None,
        monitor: str = "val/dice_mean",
        mode: str = "max",
    ) -> None:
        if phase2_epochs < 1:
            raise ValueError(f"phase2_epochs must be >= 1, got {phase2_epochs}")
        self.phase1_epochs = phase1_epochs
        self.phase2_epochs = phase2_epochs
        self.patience = patience
        self.monitor = monitor
        self.mode = mode
        self.phase = 1
        self.switch_epoch: int | None = None
        self.best: float | None = None
        self.stale = 0
        self._trainable: set[int] = set()

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "switch_epoch": self.switch_epoch, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.phase = int(state_dict["phase"])
        self.switch_epoch = state_dict["switch_epoch"]
        self.best = state_dict["best"]
        self.stale = int(state_dict["stale"])

    def phase_of(self, epoch: int) -> int:
        """The phase in which ``epoch`` trained (the switch happens at the end of phase 1's last epoch)."""
        return 1 if self.switch_epoch is None or epoch < self.switch_epoch else 2

    # -- helpers -----------------------------------------------------------------------------

    def _phase1_length(self, trainer: pl.Trainer) -> int:
        if self.phase1_epochs is not None:
            return self.phase1_epochs
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise ValueError("TwoPhaseTraining needs phase1_epochs when trainer.max_epochs is unbounded")
        return max(1, trainer.max_epochs - self.phase2_epochs)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Freeze and sample according to the current phase."""
        net = pl_module.net
        assert isinstance(net, PatchCNN)
        output = {id(p) for p in net.output_layer().parameters()}
        for p in pl_module.parameters():
            # Parameters the model froze itself (a cascade's first stage) stay frozen in both phases.
            p.requires_grad_(id(p) in self._trainable and (self.phase == 1 or id(p) in output))
        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, PatchData):
            dm.set_patch_distribution("balanced" if self.phase == 1 else "natural")

    def _switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str) -> None:
        """End phase 1 (at the end of its last epoch; the checkpoint written next records phase 2)."""
        self.phase = 2
        self.switch_epoch = trainer.current_epoch + 1
        self._apply(trainer, pl_module)
        msg = (
            f"Two-phase training: phase 1 ended after epoch {trainer.current_epoch} ({reason}); phase 2 trains only "
            f"the output layer on the natural label distribution for {self.phase2_epochs} epoch(s)"
        )
        log.info(msg)

    # -- hooks -------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "net", None), PatchCNN):
            raise TypeError("TwoPhaseTraining needs a module whose net is a Havaei patch CNN (output_layer())")
        dm = getattr(trainer, "datamodule", None)
        if stage == "fit" and dm is not None and not isinstance(dm, PatchData):
            raise TypeError(
                "TwoPhaseTraining switches the patch distribution: the data module must sample patches "
                "(brats_lightning.data.contract.PatchData)"
            )
        self._trainable = {id(p) for p in pl_module.parameters() if p.requires_grad}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, pl_module)  # after a resume: back into the saved phase

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, pl_module)
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        pl_module.log("train/phase", float(self.phase), on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("train/trainable_params", float(trainable), on_step=False, on_epoch=True, sync_dist=True)
        if self.phase == 2:
            log.info("Epoch %d: phase 2, %d trainable parameters (the output layer)", trainer.current_epoch, trainable)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.phase == 1:
            reason = None
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and self.patience is not None:
                v = float(value)
                better = self.best is None or (v > self.best if self.mode == "max" else v < self.best)
                if better:
                    self.best, self.stale = v, 0
                else:
                    self.stale += 1
                if self.stale >= self.patience:
                    reason = f"no improvement of {self.monitor} for {self.stale} epochs"
            if epoch + 1 >= self._phase1_length(trainer):
                reason = reason or f"{epoch + 1} epochs"
            if reason:
                self._switch(trainer, pl_module, reason)
        elif self.switch_epoch is not None and epoch + 1 >= self.switch_epoch + self.phase2_epochs:
            trainer.should_stop = True
