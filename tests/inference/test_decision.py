"""brats_lightning.inference.decision: argmax and region decisions."""

from __future__ import annotations

import pytest
import torch

from brats_lightning.data.labels import get_convention
from brats_lightning.inference.decision import decide, region_chain


def test_region_outputs_nest_and_are_decided_by_region_thresholds() -> None:
    conv = get_convention("brats2017")
    logits = torch.randn(4, 3, 9, 7, generator=torch.Generator().manual_seed(0)) * 3
    probs = region_chain(logits, conv)
    torch.testing.assert_close(probs.sum(1), torch.ones(4, 9, 7))
    assert float(probs.min()) >= 0
    s = torch.sigmoid(logits)
    q_wt, q_tc, q_et = s[:, 0], s[:, 0] * s[:, 1], s[:, 0] * s[:, 1] * s[:, 2]
    torch.testing.assert_close(1 - probs[:, 0], q_wt)
    torch.testing.assert_close(probs[:, 1] + probs[:, 3], q_tc)
    torch.testing.assert_close(probs[:, 3], q_et)
    expected = torch.zeros(4, 9, 7, dtype=torch.long)  # nnU-Net's rule, by hand
    expected[q_wt > 0.5] = 2
    expected[q_tc > 0.5] = 1
    expected[q_et > 0.5] = 3
    assert torch.equal(decide(probs, conv, "regions"), expected)
    assert torch.equal(decide(probs, conv, "argmax"), probs.argmax(1))
    with pytest.raises(ValueError, match="brats2013 has 5 classes"):
        region_chain(logits, get_convention("brats2013"))


def test_an_enhancing_threshold_lowers_the_bar_inside_the_decided_tumour_only() -> None:
    conv = get_convention("brats2017")  # internal classes: 0 background, 1 necrosis, 2 edema, 3 enhancing
    probs = torch.tensor(
        [
            [0.10, 0.10, 0.50, 0.30],  # edema by argmax, enhancing at 0.3
            [0.60, 0.00, 0.05, 0.35],  # background by argmax: stays background whatever the threshold
            [0.10, 0.50, 0.15, 0.25],  # necrosis, enhancing at 0.25
            [0.00, 0.20, 0.20, 0.60],  # enhancing already
        ]
    )[:, :, None]  # (N, K, 1)
    assert decide(probs, conv)[:, 0].tolist() == [2, 0, 1, 3]
    assert decide(probs, conv, et_threshold=0.3)[:, 0].tolist() == [3, 0, 1, 3]
    assert decide(probs, conv, et_threshold=0.2)[:, 0].tolist() == [3, 0, 3, 3]
    # by the region rule too: its tumour (q_wt > 0.5) decides where the bar is lowered
    assert decide(probs, conv, "regions", et_threshold=0.2)[:, 0].tolist() == [3, 0, 3, 3]
