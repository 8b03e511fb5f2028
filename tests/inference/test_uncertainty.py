"""brats_lightning.inference.uncertainty: entropy, agreement, AUROC and Spearman against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_lightning.data.labels import get_convention
from brats_lightning.inference.uncertainty import agreement, auroc, normalised_entropy, spearman


def test_the_measures_against_their_definitions() -> None:
    conv = get_convention("brats2017")
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]).view(2, 4, 1)
    torch.testing.assert_close(normalised_entropy(probs)[:, 0], torch.tensor([1.0, 0.0]))
    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 3
    b = a.copy()
    assert agreement([a, a], conv) == 1.0 and agreement([a], conv) is None
    b[1] = 2  # half the enhancing tumour becomes edema: WT Dice 1, TC and ET Dice 2/3
    assert agreement([a, b], conv) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    rng = np.random.default_rng(0)
    scores, positives = rng.random(200), rng.random(200) < 0.3
    pairs = [(s_p > s_n) + 0.5 * (s_p == s_n) for s_p in scores[positives] for s_n in scores[~positives]]
    assert auroc(scores, positives) == pytest.approx(np.mean(pairs))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
