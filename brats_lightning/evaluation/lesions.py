"""Lesion-wise metrics of the current BraTS challenges, beside the legacy whole-volume ones.

Since 2023 BraTS ranks by lesion: a missed small metastasis or a spurious blob weighs as much as a
lesion segmented well. Two official definitions exist; each function below follows one, for one
region (WT, TC or ET) of one case, on boolean masks in the files' voxel order with the voxel
spacing in mm.

**Panoptic quality** (:func:`panoptic_metrics`; the current official package ``brats-evaluation``,
built on ``panoptica``, its ``config_gli.yaml``): lesions are the 26-connected components of the
prediction and of the ground truth; a prediction lesion is matched to at most one reference
lesion by maximum bipartite matching of their Dice (Hungarian assignment over the pairs that
overlap); ``tp_lesions`` are the matched pairs, ``fp_lesions`` and ``fn_lesions`` the unmatched
prediction and reference lesions. Recognition quality ``rq = tp / (tp + fp/2 + fn/2)`` (the lesion
F1), segmentation quality ``sq_dice`` = mean Dice of the matched pairs, ``pq_dice = rq * sq_dice``.
Edge cases as the package's: without any match, ``rq = sq_dice = pq_dice = 0`` when there are
lesions, and NaN (not averaged) when both masks are empty.

**BraTS 2023 lesion-wise Dice and HD95** (:func:`brats2023_lesion_metrics`; the challenge's
``get_LesionWiseResults`` for BraTS-GLI): ground-truth components (26-connected) whose dilations
(3 iterations of the 18-connected structure) touch are one lesion; the prediction components that
overlap a lesion's dilation are its prediction, compared with it by Dice and HD95 (DeepMind's
``surface-distance``, which the official code uses: the larger of the two directions' area-weighted
95th percentiles); lesions of at most 50 mm^3 are left out, prediction components touching no
lesion are false positives, each scored Dice 0 and HD95 374; ``lesion_dice`` and ``lesion_hd95``
average over the kept lesions and the false positives (1 and 0 when there are none).

Where they differ: the panoptic definition matches one-to-one and counts a split lesion's extra
pieces as false positives; the 2023 one gives a lesion every component near it, merges nearby
ground-truth components, ignores small lesions and penalises false positives with fixed scores.
The legacy metrics stay the default columns; every column is registered, with its title and the
score of a missing prediction, in :mod:`brats_lightning.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "LESION_HD95_PENALTY",
    "panoptic_metrics",
    "brats2023_lesion_metrics",
]

#: HD95 of a missed or spurious lesion in the BraTS 2023 lesion-wise scores (mm)
LESION_HD95_PENALTY = 374.0

_CONN26 = np.ones((3, 3, 3), dtype=bool)
_CONN18 = ndimage.generate_binary_structure(3, 2)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, structure=_CONN26)
    return labels, int(n)


def panoptic_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Lesion counts and panoptic quality of one region (``brats-evaluation`` / ``panoptica`` definition).

    Returns:
        ``tp_lesions``, ``fp_lesions``, ``fn_lesions``, ``rq``, ``sq_dice``, ``pq_dice``.
    """
    from scipy.optimize import linear_sum_assignment

    p_cc, n_p = _components(np.asarray(pred, bool))
    g_cc, n_g = _components(np.asarray(gt, bool))
    matched: list[float] = []
    if n_p and n_g:
        p_size = np.bincount(p_cc.ravel(), minlength=n_p + 1)
        g_size = np.bincount(g_cc.ravel(), minlength=n_g + 1)
        both = (p_cc > 0) & (g_cc > 0)
        pairs = np.bincount(p_cc[both] * (n_g + 1) + g_cc[both], minlength=(n_p + 1) * (n_g + 1))
        pairs = pairs.reshape(n_p + 1, n_g + 1)
        pi, gi = np.nonzero(pairs)
        cost = np.full((n_g, n_p), 1.0 + 1e-6)
        dice = 2.0 * pairs[pi, gi] / (p_size[pi] + g_size[gi])
        keep = dice >= 1e-6
        cost[gi[keep] - 1, pi[keep] - 1] = 1.0 - dice[keep]
        rows, cols = linear_sum_assignment(cost)
        matched = [1.0 - cost[r, c] for r, c in zip(rows, cols) if cost[r, c] < 1.0]
    tp = len(matched)
    fp, fn = n_p - tp, n_g - tp
    if tp:
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = float(np.mean(matched))
    else:
        rq = sq = 0.0 if n_p + n_g else float("nan")
    return {
        "tp_lesions": float(tp),
        "fp_lesions": float(fp),
        "fn_lesions": float(fn),
        "rq": float(rq),
        "sq_dice": sq,
        "pq_dice": float(rq * sq),
    }


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))) for ax in range(mask.ndim)]
    return tuple(slice(max(int(i[0]) - margin, 0), int(i[-1]) + 1 + margin) for i in idx)


def _hd95(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    """DeepMind's robust Hausdorff distance at 95% (the official scorer's), ``inf`` when ``pred`` is empty."""
    import surface_distance

    distances = surface_distance.compute_surface_distances(gt, pred, tuple(float(s) for s in spacing))
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


def brats2023_lesion_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    dilation: int = 3,
    min_volume_mm3: float = 50.0,
) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region (``get_LesionWiseResults``, BraTS-GLI parameters).

    Args:
        pred: the predicted region (boolean mask).
        gt: the ground truth region (boolean mask).
        spacing: voxel size in mm along the masks' axes.
        dilation: iterations of the 18-connected dilation that merges nearby lesions and finds
            the prediction of a lesion (3 for gliomas; 1 for meningiomas and metastases).
        min_volume_mm3: lesions of at most this volume are not scored (50 for gliomas).

    Returns:
        ``lesion_dice`` and ``lesion_hd95``.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    p_cc, n_p = _components(pred)
    voxel = float(np.prod(spacing))
    scores: list[tuple[float, float]] = []
    hit: set[int] = set()
    if gt.any():
        grown, n_lesions = _components(ndimage.binary_dilation(gt, _CONN18, iterations=dilation))
        lesions = np.where(gt, grown, 0)  # ground-truth components merged when their dilations touch
        for k, sl in enumerate(ndimage.find_objects(grown), start=1):
            # the lesion's dilation lies inside its dilated component's box: work on that box
            lesion = lesions[sl] == k
            near = ndimage.binary_dilation(lesion, _CONN18, iterations=dilation)
            ids = np.unique(p_cc[sl][near])
            ids = ids[ids != 0]
            hit.update(ids.tolist())
            if lesion.sum() * voxel <= min_volume_mm3:
                continue
            if ids.size == 0:
                scores.append((0.0, LESION_HD95_PENALTY))
                continue
            # its prediction: every component that touches it, whole (it may leave the box)
            own = np.isin(p_cc, ids)
            full = np.zeros_like(gt)
            full[sl] = lesion
            box = _box(own | full, 2)
            les_b, own_b = full[box], own[box]
            dice = 2.0 * np.logical_and(les_b, own_b).sum() / (les_b.sum() + own_b.sum())
            hd = _hd95(les_b, own_b, spacing)
            scores.append((float(dice), LESION_HD95_PENALTY if not np.isfinite(hd) else hd))
        del n_lesions
    n_fp = len(set(range(1, n_p + 1)) - hit)
    n = len(scores) + n_fp
    if n == 0:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    return {
        "lesion_dice": sum(d for d, _ in scores) / n,
        "lesion_hd95": (sum(h for _, h in scores) + LESION_HD95_PENALTY * n_fp) / n,
    }
