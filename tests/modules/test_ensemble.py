"""brats_lightning.modules.ensemble: the mean probabilities of the members."""

from __future__ import annotations

from pathlib import Path

import torch

from brats_lightning.load.predictor import load_model
from brats_lightning.modules.ensemble import EnsembleModule


def test_ensemble_averages_the_members_probabilities(trained_ckpt: Path, well_trained_ckpt: Path) -> None:
    a, _ = load_model(trained_ckpt)
    b, _ = load_model(well_trained_ckpt)
    x = torch.randn(3, 8, 48, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = (a.predict_slices(x) + b.predict_slices(x)) / 2
        torch.testing.assert_close(EnsembleModule([a, b]).predict_slices(x), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(EnsembleModule([a]).predict_slices(x), a.predict_slices(x), atol=0, rtol=0)
    assert EnsembleModule([a, b]).display_name.endswith("(ensemble of 2)")
