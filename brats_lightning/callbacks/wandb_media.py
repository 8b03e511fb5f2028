"""Per-case results and overlay images for Weights & Biases (a no-op without a W&B logger)."""

from __future__ import annotations

from typing import cast

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from brats_lightning.data.labels import LabelConvention
from brats_lightning.viz import wandb_overlay

__all__ = ["WandbTestMedia"]


class WandbTestMedia(Callback):
    """After testing, log a ``test/per_case`` table and ``test/overlays`` images with masks to W&B.

    The overlays (:func:`brats_lightning.viz.wandb_overlay`) show, for each test case, the FLAIR
    slice with the most tumour and two masks that can be toggled in the W&B UI: ground truth and
    prediction.

    Args:
        max_images: overlays logged at most.
    """

    def __init__(self, max_images: int = 8) -> None:
        self.max_images = max_images

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        import wandb

        run = loggers[0].experiment
        rows = getattr(pl_module, "test_results", [])
        if rows:
            cols = list(rows[0])
            run.log({"test/per_case": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})
        conv = cast(LabelConvention, pl_module.convention)
        names = dict(enumerate(conv.names))
        images = [wandb_overlay(s, names) for s in getattr(pl_module, "test_slices", [])[: self.max_images]]
        if images:
            run.log({"test/overlays": images})
