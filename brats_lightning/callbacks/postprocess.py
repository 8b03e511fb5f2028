"""Choose the connected-component clean-up and the test-time flips on the validation cases, after training.

Havaei et al. (Sec. 4) clean their predictions with connected components but give no thresholds;
small far-away false-positive blobs cost little Dice but dominate HD95. :class:`TunePostprocess`
takes the run's best checkpoint, predicts the validation cases once with and once without
test-time mirroring, scores every candidate clean-up (none; components under ``V`` mm3 removed for
each ``V`` of a grid; only the largest component kept) by the mean region Dice over those cases,
and stores its choice in the best checkpoint (``postprocess``, ``tta_flips``, and the whole table
as ``postprocess_tuning``). The run's test and ``predict ... postprocess=auto tta=auto`` then apply
it unchanged.

The rule: the best mean Dice wins; among candidates within ``tolerance`` of it the strongest
clean-up is taken (removing blobs that cost no Dice shortens HD95). Test-time flips are kept only
when they raise the mean Dice by ``tta_min_gain`` or more (they double the inference time).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from brats_lightning.callbacks.checkpoint import final_best_checkpoint
from brats_lightning.data.contract import SegmentationData
from brats_lightning.data.labels import REGIONS, LabelConvention
from brats_lightning.errors import ConfigError
from brats_lightning.evaluation.metrics import dice
from brats_lightning.files import atomic_path, read_checkpoint
from brats_lightning.inference.cleanup import apply_cleanup, candidates, choose_within_tolerance, is_noop
from brats_lightning.inference.flips import tta_flips as flip_dims
from brats_lightning.modules.segmentation import SegmentationModule

__all__ = ["TunePostprocess", "region_dice"]

log = logging.getLogger(__name__)


def region_dice(pred: np.ndarray, label: np.ndarray, convention: LabelConvention) -> list[float]:
    """Dice of every BraTS region of class maps ``pred`` against ``label``."""
    p, g = convention.region_masks(pred), convention.region_masks(label)
    return [dice(p[r], g[r]) for r in REGIONS]


class TunePostprocess(Callback):
    """After training, choose the clean-up and the test-time flips on the validation cases (see the module doc).

    Args:
        min_volumes_mm3: the component-volume thresholds compared.
        largest_only: also compare keeping only the largest tumour component.
        tolerance: Dice margin within which the strongest clean-up is preferred.
        tta_flips: the flips tried (``lr``, ``ap``); empty: no test-time augmentation is tried.
        tta_min_gain: mean-Dice gain the flips must bring to be kept.
        max_cases: tune on at most this many validation cases (the first ones; ``None``: all).
    """

    def __init__(
        self,
        min_volumes_mm3: Sequence[float] = (100, 250, 500, 1000, 2000, 4000),
        largest_only: bool = True,
        tolerance: float = 0.002,
        tta_flips: Sequence[str] = ("lr",),
        tta_min_gain: float = 0.005,
        max_cases: int | None = 50,
    ) -> None:
        try:
            flip_dims(tta_flips)
        except ValueError as e:
            raise ConfigError(f"TunePostprocess.tta_flips: {e}") from None
        self.candidates = candidates(min_volumes_mm3, largest_only)
        self.tolerance = float(tolerance)
        self.flips = list(tta_flips)
        self.tta_min_gain = float(tta_min_gain)
        self.max_cases = max_cases
        #: the last tuning's result (also stored in the checkpoint)
        self.result: dict[str, Any] | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end, not on_train_end: it runs also when a run resumed from its last epoch's checkpoint
        # has nothing left to train (Lightning then skips the training loop and its hooks)
        best = final_best_checkpoint(trainer)
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if best and trainer.is_global_zero and isinstance(pl_module, SegmentationModule):
            if not isinstance(dm, SegmentationData):
                log.warning("No whole-case validation data: the clean-up and test-time flips were not tuned")
            else:
                device = pl_module.device  # the trainer's teardown has moved the module to the CPU
                pl_module.to(trainer.strategy.root_device)
                try:
                    self.result = self.tune(trainer, pl_module, dm, best)
                finally:
                    pl_module.to(device)
        trainer.strategy.barrier("tune_postprocess")

    @torch.no_grad()
    def tune(self, trainer: pl.Trainer, module: SegmentationModule, dm: Any, best: str) -> dict[str, Any] | None:
        """Score every candidate on the validation cases with ``best``'s weights; write the choice into ``best``.

        Returns:
            The choice and the table of scores, or ``None`` when there is no validation case.
        """
        ckpt = read_checkpoint(best)
        module.load_state_dict(ckpt["state_dict"])
        was_training = module.training
        module.eval()
        settings: list[list[str]] = [[]] + ([self.flips] if self.flips else [])
        scores = np.zeros((len(settings), len(self.candidates), len(REGIONS)))
        loader = dm.val_dataloader()
        total = len(loader) if self.max_cases is None else min(len(loader), self.max_cases)
        n = 0
        for batch in loader:
            if n == total:
                break
            batch = dm.on_after_batch_transfer(trainer.strategy.batch_to_device(batch), 0)
            label = batch["label"].permute(1, 2, 0).cpu().numpy()
            for s, flips in enumerate(settings):
                with trainer.precision_plugin.forward_context():
                    probs = module.predict_case(batch, flips)
                pred = module.decide(probs).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
                for c, option in enumerate(self.candidates):
                    cleaned = apply_cleanup(pred, batch["spacing"], module.convention, option)
                    scores[s, c] += region_dice(cleaned, label, module.convention)
            n += 1
            log.info("Tuning the clean-up: %d/%d validation cases", n, total)
        module.train(was_training)
        if n == 0:
            log.warning("No validation cases: the clean-up and test-time flips were not tuned")
            return None
        scores /= n
        means = scores.mean(-1)
        picks = [choose_within_tolerance(list(m), self.tolerance) for m in means]
        s = 1 if len(settings) > 1 and means[1, picks[1]] >= means[0, picks[0]] + self.tta_min_gain else 0
        chosen = None if is_noop(self.candidates[picks[s]]) else self.candidates[picks[s]]
        flips = settings[s]
        table = [
            {
                "tta_flips": list(settings[si]),
                "postprocess": None if is_noop(self.candidates[ci]) else self.candidates[ci],
                **{f"dice_{r}": float(scores[si, ci, ri]) for ri, r in enumerate(REGIONS)},
                "dice_mean": float(means[si, ci]),
            }
            for si in range(len(settings))
            for ci in range(len(self.candidates))
        ]
        result = {"postprocess": chosen, "tta_flips": list(flips), "cases": n, "table": table}
        module.postprocess = dict(chosen) if chosen else None
        module.tta_flips = list(flips)
        ckpt["postprocess"], ckpt["tta_flips"], ckpt["postprocess_tuning"] = chosen, list(flips), result
        with atomic_path(best) as tmp:
            torch.save(ckpt, tmp)
        log.info(
            "Chose clean-up %s and test-time flips %s on %d validation cases: mean Dice %.4f (none, no flips: %.4f)",
            chosen or "none",
            list(flips) or "none",
            n,
            means[s, picks[s]],
            means[0, 0],
        )
        return result
