"""Post-processing of predicted segmentations (Havaei et al. Sec. 4).

"A simple method based on connected components was implemented to remove flat blobs which might
appear in the predictions due to bright corners of the brains close to the skull." The paper gives
no thresholds; we remove every 3D connected component of the predicted tumour (26-connectivity)
whose volume is below ``min_volume_mm3`` or which spans fewer than ``min_slices`` axial slices
(a flat blob). ``largest_only`` keeps only the largest component (nnU-Net's rule, Isensee et al.
2021, for single tumours). :class:`~brats_lightning.callbacks.postprocess.TunePostprocess` chooses
among these rules on the validation cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["remove_small_components"]


def remove_small_components(
    classes: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_volume_mm3: float = 500.0,
    min_slices: int = 3,
    axial_axis: int = 2,
    largest_only: bool = False,
) -> np.ndarray:
    """Set to background the small or flat connected components of the tumour (all non-zero classes).

    Args:
        classes: ``(X, Y, Z)`` class map (0 = background).
        spacing: voxel size in mm.
        min_volume_mm3: components smaller than this are removed.
        min_slices: components spanning fewer axial slices are removed.
        axial_axis: the axis across axial slices.
        largest_only: also remove every component but the largest.

    Returns:
        A copy of ``classes`` without the removed components.
    """
    out = np.array(classes, copy=True)
    tumour = out > 0
    if not tumour.any():
        return out
    lab, n = ndimage.label(tumour, structure=np.ones((3, 3, 3), bool))
    voxel = float(np.prod(spacing))
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel
    objects = ndimage.find_objects(lab)
    remove = np.zeros(n + 1, bool)
    for i, sl in enumerate(objects, start=1):
        extent = sl[axial_axis].stop - sl[axial_axis].start
        remove[i] = sizes[i] < min_volume_mm3 or extent < min_slices
    if largest_only:
        keep = int(np.argmax(sizes[1:])) + 1
        remove[1:] = True
        remove[keep] = False
    out[remove[lab]] = 0
    return out
