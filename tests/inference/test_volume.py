"""brats_lightning.inference.volume: whole-volume inference and 2.5D context."""

from __future__ import annotations

import torch

from brats_lightning.inference.volume import with_context


def test_context_slices_are_the_neighbours_in_order_with_zeros_beyond_the_volume() -> None:
    volume = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 2, 3, 3).contiguous()
    out = with_context(volume, torch.tensor([0, 2, 4]), 1)
    assert out.shape == (3, 6, 3, 3)
    assert out[:, ::2, 0, 0].tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 0]]  # slice z-1, z, z+1 (zeros outside)
    assert torch.equal(with_context(volume, torch.tensor([1]), 0), volume[1:2])
