"""Connected-component post-processing (Havaei et al. Sec. 4)."""

from __future__ import annotations

import numpy as np

from brats_lightning.inference.cleanup import remove_small_components


def test_removes_small_and_flat_blobs_keeps_the_tumour() -> None:
    seg = np.zeros((40, 40, 30), np.uint8)
    seg[10:20, 10:20, 5:15] = 2  # the tumour: 1000 voxels over 10 slices
    seg[12:16, 12:16, 8:12] = 3
    seg[30:33, 30:33, 20:23] = 1  # small: 27 voxels
    seg[0:15, 25:40, 28] = 2  # flat: 225 voxels on a single slice (a bright corner near the skull)
    out = remove_small_components(seg, spacing=(1, 1, 1), min_volume_mm3=100, min_slices=3)
    np.testing.assert_array_equal(out[10:20, 10:20, 5:15], seg[10:20, 10:20, 5:15])
    assert out[30:33, 30:33, 20:23].sum() == 0 and out[:, :, 28].sum() == 0
    assert seg[30, 30, 20] == 1  # the input is untouched


def test_volume_threshold_is_in_mm3() -> None:
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[5:10, 5:10, 5:10] = 1  # 125 voxels
    assert remove_small_components(seg, (1, 1, 1), min_volume_mm3=200, min_slices=1).sum() == 0
    assert remove_small_components(seg, (2, 2, 2), min_volume_mm3=200, min_slices=1).sum() == 125  # 1000 mm3
    assert remove_small_components(np.zeros((4, 4, 4), np.uint8)).sum() == 0
