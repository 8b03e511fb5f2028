"""brats_lightning.modules.segmentation: what every segmentation module does (compile, stored data configuration)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brats_lightning.load.predictor import load_model
from brats_lightning.modules.fcn import FCNModule


@pytest.mark.slow
def test_a_compiled_fcn_gives_the_eager_output_and_the_same_checkpoint_state() -> None:
    torch.manual_seed(0)
    eager = FCNModule(8, 4, width=0.25, test_hd95=False).eval()
    compiled = FCNModule(8, 4, width=0.25, test_hd95=False, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.use_compile and not eager.use_compile
    x = torch.randn(2, 8, 48, 56)
    with torch.no_grad():
        torch.testing.assert_close(compiled.run_net(x), eager.run_net(x), rtol=1e-4, atol=1e-4)
        # another slice size: dynamic shapes, no wrong reuse of the first graph
        y = torch.randn(1, 8, 40, 64)
        torch.testing.assert_close(compiled.run_net(y), eager.run_net(y), rtol=1e-4, atol=1e-4)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints are the same


def test_checkpoint_carries_the_data_configuration(trained_ckpt: Path) -> None:
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    assert state["module_class"] == "brats_lightning.modules.fcn.FCNModule"
    assert state["data_config"]["symmetry"]["enabled"] is True
    assert state["data_config"]["modalities"] == ["flair", "t1", "t1c", "t2"]
    model, dc = load_model(trained_ckpt)
    assert dc["convention"] == "brats2017" and not model.training
