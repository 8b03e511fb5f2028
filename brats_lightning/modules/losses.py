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

``dice_bce`` is the loss of region-based models (nnU-Net's BraTS setting, Isensee et al. 2021): the
net outputs the regions themselves (:func:`~brats_lightning.inference.volume.region_chain`: whole tumour,
core given whole tumour, enhancing given core), trained with binary cross entropy plus the same
batch soft Dice on the three region probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from brats_lightning.data.labels import REGIONS, LabelConvention

__all__ = ["LOSSES", "SegmentationLoss", "region_maps"]

#: the loss names ``model.loss`` takes (``dice_bce``: region-based outputs only)
LOSSES: tuple[str, ...] = ("ce", "ce_dice", "dice_bce")


def region_maps(per_class: torch.Tensor, convention: LabelConvention) -> torch.Tensor:
    """``(N, R, ...)`` region maps (whole tumour, core, enhancing) from ``(N, K, ...)`` class maps.

    Works on probabilities (the sum of a region's class probabilities) and on one-hot labels alike.
    """
    return torch.stack([per_class[:, list(convention.region_classes(r))].sum(1) for r in REGIONS], dim=1)


class SegmentationLoss(nn.Module):
    """Per-pixel cross entropy (``"ce"``, the papers), or cross entropy plus region soft Dice (``"ce_dice"``),
    or, for region logits, binary cross entropy plus region soft Dice (``"dice_bce"``).

    Args:
        convention: the label convention (its regions).
        kind: ``"ce"``, ``"ce_dice"`` or ``"dice_bce"``.
        dice_weight: weight of the Dice term.
        region_weights: weights of the whole tumour's, the core's and the enhancing tumour's Dice in the Dice term
            (a weighted mean; ``(1, 1, 1)``: their plain mean), e.g. ``(1, 1, 2)`` to weigh the enhancing tumour
            twice.

    Computed in fp32 whatever the autocast precision.
    """

    def __init__(
        self,
        convention: LabelConvention,
        kind: str = "ce",
        dice_weight: float = 1.0,
        region_weights: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; expected one of {list(LOSSES)}")
        weights = [float(w) for w in region_weights]
        if len(weights) != len(REGIONS) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"region_weights must be {len(REGIONS)} weights >= 0, not all 0; got {list(region_weights)}"
            )
        self.convention = convention
        self.kind = kind
        self.dice_weight = float(dice_weight)
        self.register_buffer("region_weights", torch.tensor(weights) / sum(weights), persistent=False)
        self.dice = DiceLoss(batch=True, smooth_nr=1e-5, smooth_dr=1e-5, reduction="none")

    def _dice(self, probs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """The regions' batch soft Dice losses, weighted by :attr:`region_weights`."""
        per_region = self.dice(probs, truth).reshape(-1)
        return (per_region * self.region_weights.to(per_region)).sum()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(N, K, H, W)`` logits (``(N, 3, H, W)`` region logits for ``dice_bce``) against ``(N, H, W)``
        class indices."""
        logits = logits.float()
        if self.kind == "dice_bce":
            return self._regions(logits, target)
        loss = F.cross_entropy(logits, target)
        if self.kind == "ce_dice":
            probs = region_maps(torch.softmax(logits, dim=1), self.convention)
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
            loss = loss + self.dice_weight * self._dice(probs, region_maps(onehot, self.convention))
        return loss

    def _regions(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # log q of the chained sigmoids (q_wt = s0, q_tc = s0 s1, q_et = s0 s1 s2), in log space for stability
        log_s = F.logsigmoid(logits)
        log_q = torch.cumsum(log_s, dim=1)
        log_not_q = torch.log(-torch.expm1(log_q.clamp(max=-1e-7)))
        onehot = F.one_hot(target, self.convention.num_classes).movedim(-1, 1).to(logits.dtype)
        truth = region_maps(onehot, self.convention)
        bce = -(truth * log_q + (1 - truth) * log_not_q).mean()
        return bce + self.dice_weight * self._dice(log_q.exp(), truth)
