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
