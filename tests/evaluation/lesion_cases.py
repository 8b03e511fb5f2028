"""Deterministic prediction / ground-truth pairs that exercise the lesion-wise rules of the official scorers.

Each case is a pair of ``48x48x40`` label volumes at 1 mm in BraTS 2023 labels (1 NCR, 2 edema, 3
enhancing), built from boxes, so the official packages and ours read the very same files. The cases:

* ``merge``: two ground-truth enhancing lesions 4 voxels apart (their 3-voxel dilations touch: one lesion
  for the 2023 rules, two for the panoptic ones), the prediction covers one;
* ``apart``: the same two lesions 8 voxels apart (no merge);
* ``split``: one ground-truth lesion, the prediction in two pieces;
* ``small``: a large lesion and one of 27 voxels (under the 50 mm^3 rule), missed; a spurious blob;
* ``near``: a predicted blob 3 voxels from a lesion (inside its dilation) and one 6 voxels away;
* ``no_et``: no enhancing tumour in the truth, some predicted; ``empty``: nothing anywhere but edema in
  the prediction; ``perfect``: identical files.

Used by ``scripts/make_lesion_reference.py`` (which runs the official packages once and writes
``tests/data/official_lesion_reference.json``) and by ``tests/test_lesions.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (48, 48, 40)


def _box(arr: np.ndarray, lo: tuple[int, int, int], size: tuple[int, int, int], value: int) -> None:
    arr[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = value


def _tumour(arr: np.ndarray, lo: tuple[int, int, int], size: int) -> None:
    """A tumour: a box of edema holding a box of enhancing tumour, which holds a box of necrosis."""
    _box(arr, (lo[0] - 2, lo[1] - 2, lo[2] - 2), (size + 4, size + 4, size + 4), 2)
    _box(arr, lo, (size, size, size), 3)
    _box(arr, (lo[0] + 1, lo[1] + 1, lo[2] + 1), (max(1, size - 2),) * 3, 1)


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (prediction, ground truth), uint8 label volumes."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def empty() -> np.ndarray:
        return np.zeros(SHAPE, np.uint8)

    for name, gap in (("merge", 4), ("apart", 8)):
        gt, pred = empty(), empty()
        _box(gt, (10, 10, 10), (6, 6, 6), 3)
        _box(gt, (10, 16 + gap, 10), (6, 6, 6), 3)
        _box(pred, (10, 10, 10), (6, 6, 5), 3)
        out[name] = (pred, gt)
    gt, pred = empty(), empty()
    _tumour(gt, (12, 12, 12), 10)
    _tumour(pred, (12, 12, 12), 10)
    pred[12:22, 16:18, 10:24] = 2  # a cut through the core: the core and the enhancing tumour fall in two
    out["split"] = (pred, gt)
    gt, pred = empty(), empty()
    _tumour(gt, (8, 8, 8), 10)
    _box(gt, (36, 36, 30), (3, 3, 3), 3)  # 27 voxels: under 50 mm^3
    _tumour(pred, (8, 9, 8), 10)
    _box(pred, (38, 4, 4), (4, 4, 4), 2)  # a spurious edema blob
    out["small"] = (pred, gt)
    gt, pred = empty(), empty()
    _box(gt, (14, 14, 14), (8, 8, 8), 3)
    _box(pred, (14, 14, 14), (8, 8, 8), 3)
    _box(pred, (25, 14, 14), (3, 3, 3), 3)  # 3 voxels past the lesion: inside its dilation
    _box(pred, (14, 28, 14), (3, 3, 3), 3)  # 6 voxels past it: a false positive
    out["near"] = (pred, gt)
    gt, pred = empty(), empty()
    _box(gt, (10, 10, 10), (12, 12, 12), 2)
    _box(gt, (13, 13, 13), (5, 5, 5), 1)
    _box(pred, (10, 10, 10), (12, 12, 12), 2)
    _box(pred, (14, 14, 14), (4, 4, 4), 3)
    out["no_et"] = (pred, gt)
    gt, pred = empty(), empty()
    _box(pred, (20, 20, 20), (5, 5, 5), 2)
    out["empty"] = (pred, gt)
    gt = empty()
    _tumour(gt, (15, 15, 12), 9)
    out["perfect"] = (gt.copy(), gt)
    return out


def write(folder: Path) -> tuple[Path, Path]:
    """Write every case as ``<folder>/pred/<case>.nii.gz`` and ``<folder>/gt/<case>.nii.gz`` (1 mm, identity
    affine, BraTS 2023 labels); returns the two folders."""
    import nibabel as nib

    pred_dir, gt_dir = folder / "pred", folder / "gt"
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for name, (pred, gt) in cases().items():
        nib.save(nib.Nifti1Image(pred, np.eye(4)), str(pred_dir / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(gt, np.eye(4)), str(gt_dir / f"{name}.nii.gz"))
    return pred_dir, gt_dir
