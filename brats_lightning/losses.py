"""Training losses of the slice models: the papers' cross entropy, and cross entropy plus soft Dice
on the BraTS regions.

Shen et al. (Sec. 2.1) and Havaei et al. (Sec. 3.3) train with per-pixel categorical cross entropy.
Since then the BraTS leaders (Isensee et al. 2018, nnU-Net; Myronenko 2018) optimise the evaluated
quantity directly: a soft Dice loss on the *regions* (whole tumour, core, enhancing tumour), which
weights the small regions (enhancing tumour, core) as much as the large one, added to the cross
entropy. The region probabilities are sums of the softmax's class probabilities (a region is a
union of classes: :meth:`~brats_lightning.data.labels.LabelConvention.region_classes`); the Dice is
MONAI's ``DiceLoss`` over the whole batch ("batch Dice": slices without a region do not make it
undefined).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from brats_lightning.data.labels import REGIONS, LabelConvention

__all__ = ["LOSSES", "SegmentationLoss", "region_maps"]

#: the loss names ``model.loss`` takes
LOSSES: tuple[str, ...] = ("ce", "ce_dice")


def region_maps(per_class: torch.Tensor, convention: LabelConvention) -> torch.Tensor:
    """``(N, R, ...)`` region maps (whole tumour, core, enhancing) from ``(N, K, ...)`` class maps.

    Works on probabilities (the sum of a region's class probabilities) and on one-hot labels alike.
    """
    return torch.stack([per_class[:, list(convention.region_classes(r))].sum(1) for r in REGIONS], dim=1)


class SegmentationLoss(nn.Module):
    """Per-pixel cross entropy (``"ce"``, the papers), or cross entropy plus region soft Dice (``"ce_dice"``).

    Args:
        convention: the label convention (its regions).
        kind: ``"ce"`` or ``"ce_dice"``.
        dice_weight: weight of the Dice term (``ce_dice``).

    Computed in fp32 whatever the autocast precision.
    """

    def __init__(self, convention: LabelConvention, kind: str = "ce", dice_weight: float = 1.0) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; expected one of {list(LOSSES)}")
        self.convention = convention
        self.kind = kind
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(N, K, H, W)`` logits against ``(N, H, W)`` class indices."""
        logits = logits.float()
        loss = F.cross_entropy(logits, target)
        if self.kind == "ce_dice":
            probs = region_maps(torch.softmax(logits, dim=1), self.convention)
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
            loss = loss + self.dice_weight * self.dice(probs, region_maps(onehot, self.convention))
        return loss
