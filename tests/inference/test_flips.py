"""brats_lightning.inference.flips: test-time mirroring."""

from __future__ import annotations

import pytest
import torch

from brats_lightning.inference.flips import tta_flips
from brats_lightning.modules.ensemble import EnsembleModule
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.modules.segmentation import SegmentationModule


def _mirror_symmetric_(module: SegmentationModule, dim: int = 2) -> SegmentationModule:
    """Make every kernel symmetric under the flip of ``dim``: the net becomes mirror-equivariant."""
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(dim)) / 2)
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, same for every pixel
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


@pytest.mark.parametrize(
    "make",
    [lambda: FCNModule(8, 4, width=0.25), lambda: PatchCNNModule("twopath", in_channels=4, num_classes=4)],
    ids=["fcn", "twopath"],
)
def test_mirroring_leaves_a_mirror_equivariant_net_unchanged(make) -> None:
    """Whole-slice inference stays exact under TTA: x is axis -2 of the slices, 96 a multiple of 4."""
    torch.manual_seed(0)
    model = make().eval()
    channels = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.randn(2, channels, 96, 70)
    tta = EnsembleModule([model], tta_flips(["lr"]))
    with torch.no_grad():
        assert not torch.allclose(tta.predict_slices(x), model.predict_slices(x), atol=1e-4)  # a generic net
        _mirror_symmetric_(model)
        plain, mirrored = model.predict_slices(x), tta.predict_slices(x)
    torch.testing.assert_close(mirrored, plain, atol=2e-6, rtol=0)
    assert plain.shape == (2, 4, 96, 70)
