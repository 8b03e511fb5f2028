"""Per-case results and overlay images for Weights & Biases (a no-op without a W&B logger)."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

__all__ = ["WandbTestMedia", "display_image"]


def display_image(image: np.ndarray) -> np.ndarray:
    """``(X, Y)`` z-scored slice -> ``(Y, X)`` uint8, anterior up, the patient's right on the right."""
    a = np.asarray(image, dtype=np.float32)
    brain = a != 0  # z-scored images: the background is exactly 0; shown black
    lo, hi = np.percentile(a[brain], [0.5, 99.5]) if brain.any() else (0.0, 1.0)
    a = np.where(brain, 0.08 + 0.92 * np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1), 0.0)
    return (a.T[::-1] * 255).astype(np.uint8)


class WandbTestMedia(Callback):
    """After testing, log a ``test/per_case`` table and ``test/overlays`` images with masks to W&B.

    The overlays show, for each test case, the FLAIR slice with the most tumour and two masks that
    can be toggled in the W&B UI: ground truth and prediction.

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
        conv = pl_module.convention
        names = {i: n for i, n in enumerate(conv.names)}
        images = []
        for s in getattr(pl_module, "test_slices", [])[: self.max_images]:
            ch = s["channels"].index("flair") if "flair" in s["channels"] else 0
            masks = {
                key: {"mask_data": np.ascontiguousarray(s[src].T[::-1]), "class_labels": names}
                for key, src in (("ground_truth", "label"), ("prediction", "pred"))
            }
            images.append(wandb.Image(display_image(s["image"][ch]), masks=masks, caption=s["case"]))
        if images:
            run.log({"test/overlays": images})
