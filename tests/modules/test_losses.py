"""brats_lightning.modules.losses: cross entropy, region Dice, BCE + Dice of nested regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brats_lightning.data.labels import get_convention
from brats_lightning.modules.losses import SegmentationLoss


def test_the_region_loss_is_bce_plus_soft_dice_of_the_nested_regions() -> None:
    from brats_lightning.modules.losses import SegmentationLoss

    conv = get_convention("brats2017")
    logits = torch.randn(3, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 4, (3, 12, 10), generator=torch.Generator().manual_seed(2))
    s = torch.sigmoid(logits)
    q = torch.stack([s[:, 0], s[:, 0] * s[:, 1], s[:, 0] * s[:, 1] * s[:, 2]], 1)
    truth = torch.stack([(target > 0), (target == 1) | (target == 3), target == 3], 1).float()
    bce = F.binary_cross_entropy(q, truth)
    inter, total = (q * truth).sum((0, 2, 3)), (q + truth).sum((0, 2, 3))
    dice = (1 - (2 * inter + 1e-5) / (total + 1e-5)).mean()  # batch Dice per region, averaged
    loss = SegmentationLoss(conv, "dice_bce", dice_weight=1.0)(logits, target)
    torch.testing.assert_close(loss, bce + dice, rtol=1e-4, atol=1e-5)


def test_ce_is_the_papers_cross_entropy_and_ce_dice_adds_the_region_soft_dice() -> None:
    conv = get_convention("brats2017")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, 11, generator=g)
    target = torch.randint(0, 4, (3, 9, 11), generator=g)
    ce = SegmentationLoss(conv, "ce")(logits, target)
    assert torch.allclose(ce, F.cross_entropy(logits, target))
    # independent reference: numpy soft Dice over the batch of the three regions (sums of classes)
    p = torch.softmax(logits, 1).numpy().astype(np.float64)
    t = target.numpy()
    dices = []
    for classes in ([1, 2, 3], [1, 3], [3]):  # wt, tc, et as internal classes of brats2017 (1, 2, 4)
        pr, gr = p[:, classes].sum(1), np.isin(t, classes).astype(np.float64)
        dices.append((2 * (pr * gr).sum() + 1e-5) / (pr.sum() + gr.sum() + 1e-5))
    expected = F.cross_entropy(logits, target).item() + 0.5 * (1 - np.mean(dices))
    got = SegmentationLoss(conv, "ce_dice", dice_weight=0.5)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # region weights: a weighted mean of the regions' Dice losses (here the enhancing tumour three times)
    weighted = SegmentationLoss(conv, "ce_dice", dice_weight=0.5, region_weights=[1, 1, 3])(logits, target)
    mean = np.average([1 - d for d in dices], weights=[1, 1, 3])
    assert weighted.item() == pytest.approx(F.cross_entropy(logits, target).item() + 0.5 * mean, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        SegmentationLoss(conv, "focal")
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="region_weights must be 3 weights"):
            SegmentationLoss(conv, "ce_dice", region_weights=bad)
