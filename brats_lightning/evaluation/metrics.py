"""Per-region segmentation metrics following the official BraTS scorer (CaPTk) conventions.

All numpy metrics take two boolean masks of identical shape (any dimension; inputs are converted
with ``np.asarray(x, bool)``) for one region (WT, TC or ET) of one case. ``P`` is the prediction,
``T`` the ground truth, ``P0``/``T0`` their complements.

Conventions for empty masks (BraTS/CaPTk):

* Dice ``2|P∩T| / (|P|+|T|)``: 1 when P and T are both empty, 0 when only one is.
* Sensitivity ``|P∩T| / |T|``: undefined when T is empty; then 1 if P is also empty (nothing to find,
  nothing wrongly found) else 0 (every predicted voxel is a false positive), mirroring Dice.
* Specificity ``|P0∩T0| / |T0|`` over all voxels of the given arrays: when T0 is empty (the whole
  array is tumour) it is 1 if P0 is also empty else 0, the same rule applied to the complements.
* PPV ``|P∩T| / |P|``: when P is empty it is 1 if T is also empty else 0 (a missed lesion).
* HD95 (mm): 0 when both are empty, :data:`HD95_EMPTY_PENALTY` (373.13, the 240x240x155 diagonal)
  when only one is.

Every column of the results (these, and the lesion-wise ones of :mod:`brats_lightning.evaluation.lesions`) is
registered here once (:data:`METRICS`, :func:`register_metric`): its name, table title and the score
of a missing prediction. ``evaluate``, a run's test metrics, ``per_case.csv``, ``summary.json``, the
printed tables and the report (:mod:`brats_lightning.evaluation.results`) all read the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from brats_lightning.evaluation.lesions import LESION_HD95_PENALTY, brats2023_lesion_metrics, panoptic_metrics

__all__ = [
    "BRATS_VOLUME_DIAGONAL_MM",
    "HD95_EMPTY_PENALTY",
    "METRICS",
    "Metric",
    "failure_scores",
    "metric_names",
    "register_metric",
    "unregister_metric",
    "dice",
    "dice_torch",
    "hd95",
    "ppv",
    "region_metrics",
    "sensitivity",
    "specificity",
    "volume_diff_ml",
]

#: Diagonal of the 240x240x155 BraTS volume at 1 mm isotropic spacing, in mm (373.128...).
BRATS_VOLUME_DIAGONAL_MM: float = float(np.sqrt(240**2 + 240**2 + 155**2))

#: HD95 assigned when exactly one of prediction / truth is empty. It is the exact
#: 240x240x155 diagonal in mm, which the BraTS scorer prints rounded as 373.13.
HD95_EMPTY_PENALTY: float = BRATS_VOLUME_DIAGONAL_MM


def _as_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert both inputs to boolean arrays and check that their shapes match."""
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred has shape {p.shape}, gt has shape {g.shape}")
    return p, g


def _ratio(num: int, den: int, num_empty_ok: bool) -> float:
    """``num / den``; for ``den == 0`` return 1.0 if ``num_empty_ok`` else 0.0."""
    if den == 0:
        return 1.0 if num_empty_ok else 0.0
    return float(num) / float(den)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P|+|T|)``.

    Args:
        pred: Predicted mask.
        gt: Ground-truth mask of the same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is empty.
    """
    p, g = _as_masks(pred, gt)
    inter = int(np.count_nonzero(p & g))
    den = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return _ratio(2 * inter, den, num_empty_ok=True)


def sensitivity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Sensitivity (recall) ``|P∩T| / |T|``.

    Args:
        pred: Predicted mask.
        gt: Ground-truth mask of the same shape.

    Returns:
        Sensitivity in [0, 1]; when T is empty: 1.0 if P is empty too, else 0.0.
    """
    p, g = _as_masks(pred, gt)
    n_t = int(np.count_nonzero(g))
    return _ratio(int(np.count_nonzero(p & g)), n_t, num_empty_ok=not p.any())


def specificity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Specificity ``|P0∩T0| / |T0|`` over all voxels of the given arrays.

    Args:
        pred: Predicted mask.
        gt: Ground-truth mask of the same shape.

    Returns:
        Specificity in [0, 1]; when T0 is empty (everything is foreground in the truth): 1.0 if P0 is
        empty too, else 0.0.
    """
    p, g = _as_masks(pred, gt)
    p0, g0 = ~p, ~g
    n_t0 = int(np.count_nonzero(g0))
    return _ratio(int(np.count_nonzero(p0 & g0)), n_t0, num_empty_ok=not p0.any())


def ppv(pred: np.ndarray, gt: np.ndarray) -> float:
    """Positive predictive value (precision) ``|P∩T| / |P|``.

    Args:
        pred: Predicted mask.
        gt: Ground-truth mask of the same shape.

    Returns:
        PPV in [0, 1]; when P is empty: 1.0 if T is empty too, else 0.0.
    """
    p, g = _as_masks(pred, gt)
    n_p = int(np.count_nonzero(p))
    return _ratio(int(np.count_nonzero(p & g)), n_p, num_empty_ok=not g.any())


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing has length {len(sp)} but the masks have {ndim} dimensions")
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive and finite, got {sp}")
    return sp


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face (6-connected in 3D) neighbour outside the mask.

    Computed as ``mask & ~binary_erosion(mask, cross)``; voxels outside the array count as background,
    so foreground voxels on the array border are surface voxels.
    """
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _surface_distances(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Pooled surface distances (mm): P-surface to T-surface, then T-surface to P-surface.

    Both masks must be non-empty.
    """
    surf_p = _surface(p)
    surf_g = _surface(g)
    # distance_transform_edt gives, for each non-zero voxel, the distance to the nearest zero voxel:
    # on ~surf_g that is the distance to the nearest surface voxel of T.
    dist_to_g = ndimage.distance_transform_edt(~surf_g, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    return np.concatenate([dist_to_g[surf_p], dist_to_p[surf_g]])


def _crop_to_union(p: np.ndarray, g: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus ``margin`` voxels (clipped to the array).

    The background ring keeps surface voxels and distances independent of how the array border is
    treated, so HD95 on the crop equals HD95 on the full arrays.
    """
    union = p | g
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        lo = max(int(idx[0]) - margin, 0)
        hi = min(int(idx[-1]) + 1 + margin, union.shape[axis])
        slices.append(slice(lo, hi))
    sl = tuple(slices)
    return p[sl], g[sl]


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    crop: bool = True,
) -> float:
    """95th-percentile Hausdorff distance in mm, pooling both directions (BraTS convention).

    Surface voxels are the mask voxels with at least one face (6-connected in 3D, 4-connected in 2D)
    neighbour outside the mask, i.e. the mask minus its binary erosion by a cross; voxels outside the
    array count as background. The distances from every surface voxel of P to the nearest surface
    voxel of T and from every surface voxel of T to the nearest surface voxel of P (Euclidean, with
    ``spacing``) are concatenated and their 95th percentile (``np.percentile``, linear
    interpolation) is returned.

    Args:
        pred: Predicted mask.
        gt: Ground-truth mask of the same shape.
        spacing: Voxel size in mm along each axis (anisotropic allowed); length must equal ``ndim``.
        crop: Crop to the bounding box of the union plus a 1-voxel margin first. This only saves time;
            the result is identical.

    Returns:
        HD95 in mm; 0.0 when both masks are empty, :data:`HD95_EMPTY_PENALTY` (373.13) when exactly
        one is empty.
    """
    p, g = _as_masks(pred, gt)
    sp = _check_spacing(spacing, p.ndim)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return HD95_EMPTY_PENALTY
    if crop:
        p, g = _crop_to_union(p, g)
    return float(np.percentile(_surface_distances(p, g, sp), 95))


# -- the registry: every per-case, per-region column in one place ---------------------------------


@dataclass(frozen=True)
class Metric:
    """One column of the per-case results (``per_case.csv``, ``summary.json``, tables).

    Attributes:
        name: column key (``dice``); run metrics are ``test/<name>_<region>``.
        title: heading in tables (``Dice``).
        failure: the score of a missing or unreadable prediction (the official scorers' penalty).
        decimals: digits shown in tables.
        group: ``"volume"`` (the legacy whole-volume metrics, always computed), ``"hd95"`` (computed
            unless switched off: the slowest) or ``"lesion"`` (lesion-wise, on request).
    """

    name: str
    title: str
    failure: float
    decimals: int = 3
    group: str = "volume"


#: function of (pred mask, truth mask, spacing in mm) -> {column: value}
MetricFn = Callable[[np.ndarray, np.ndarray, tuple[float, ...]], dict[str, float]]

#: every registered column, in table order
METRICS: dict[str, Metric] = {}
_FUNCTIONS: list[tuple[tuple[Metric, ...], MetricFn]] = []
_GROUPS = ("volume", "hd95", "lesion")


def register_metric(*columns: Metric) -> Callable[[Callable], Callable]:
    """Register a metric: a decorator for a function ``(pred, gt, spacing) -> float``, or, for several
    ``columns`` computed together, ``-> dict`` of them.

    Example (a toy metric: the predicted volume in ml)::

        @register_metric(Metric("volume_ml", "Volume (ml)", failure=0.0, decimals=1))
        def volume_ml(pred, gt, spacing):
            return float(pred.sum() * np.prod(spacing) / 1000)

    It then appears in ``evaluate``, in a run's test metrics (``test/volume_ml_wt``), ``per_case.csv``,
    ``summary.json``, the printed tables and the report.
    """
    for c in columns:
        if c.name in METRICS:
            raise ValueError(f"metric {c.name!r} is registered twice")
        if c.group not in _GROUPS:
            raise ValueError(f"metric {c.name!r}: group must be one of {_GROUPS}, got {c.group!r}")
    if not columns:
        raise ValueError("register_metric needs at least one Metric")

    def decorator(fn: Callable) -> Callable:
        if len(columns) == 1:
            name = columns[0].name

            def one(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
                return {name: float(fn(p, g, spacing))}

            _FUNCTIONS.append((columns, one))
        else:
            _FUNCTIONS.append((columns, fn))
        METRICS.update({c.name: c for c in columns})
        return fn

    return decorator


def unregister_metric(name: str) -> None:
    """Remove a registered metric (with the columns computed together with it), e.g. after a notebook trial."""
    group = next((cols for cols, _ in _FUNCTIONS if name in {c.name for c in cols}), None)
    if group is None:
        raise KeyError(f"no registered metric {name!r}")
    _FUNCTIONS[:] = [(cols, fn) for cols, fn in _FUNCTIONS if cols is not group]
    for c in group:
        del METRICS[c.name]


def metric_names(hd95: bool = True, lesion_wise: bool = False) -> list[str]:
    """The columns computed with these options, in table order."""
    groups = {"volume", *(["hd95"] if hd95 else []), *(["lesion"] if lesion_wise else [])}
    return [m.name for m in METRICS.values() if m.group in groups]


def failure_scores(names: Sequence[str]) -> dict[str, float]:
    """The scores of a missing or invalid prediction for these columns."""
    return {n: METRICS[n].failure for n in names}


def region_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    include_hd95: bool = True,
    lesion_wise: bool = False,
) -> dict[str, float]:
    """Every registered metric for one region of one case.

    Args:
        pred: Predicted mask.
        gt: Ground-truth mask of the same shape.
        spacing: Voxel size in mm along each axis (HD95, lesion volumes).
        include_hd95: Compute HD95; when False the ``hd95`` key is left out.
        lesion_wise: Add the lesion-wise columns (:mod:`brats_lightning.evaluation.lesions`).

    Returns:
        ``{name: value}`` in :data:`METRICS` order: ``dice``, ``hd95`` (only if ``include_hd95``),
        ``sensitivity``, ``specificity``, ``ppv``, then the lesion-wise ones; empty-mask conventions
        as in the individual functions.
    """
    p, g = _as_masks(pred, gt)
    sp = _check_spacing(spacing, p.ndim)
    wanted = metric_names(include_hd95, lesion_wise)
    values: dict[str, float] = {}
    for columns, fn in _FUNCTIONS:
        if any(c.name in wanted for c in columns):
            values.update(fn(p, g, sp))
    return {n: values[n] for n in wanted}


register_metric(Metric("dice", "Dice", failure=0.0))(lambda p, g, spacing: dice(p, g))
register_metric(Metric("hd95", "HD95 (mm)", failure=HD95_EMPTY_PENALTY, decimals=2, group="hd95"))(hd95)
register_metric(Metric("sensitivity", "Sensitivity", failure=0.0))(lambda p, g, spacing: sensitivity(p, g))
register_metric(Metric("specificity", "Specificity", failure=1.0))(lambda p, g, spacing: specificity(p, g))
register_metric(Metric("ppv", "PPV", failure=0.0))(lambda p, g, spacing: ppv(p, g))


@register_metric(Metric("volume_diff_ml", "Volume difference (ml)", failure=float("nan"), decimals=1))
def volume_diff_ml(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Predicted minus true volume of the region in ml: below 0 the region is under-segmented.

    Dice cannot tell under- from over-segmentation; the signed volume error can (the enhancing tumour's
    mean below 0 is the under-segmentation of an unfamiliar scanner). It is undefined (``nan``, left out
    of the means) for a missing prediction, whose predicted volume is unknown rather than zero.
    """
    return float((int(np.count_nonzero(pred)) - int(np.count_nonzero(gt))) * float(np.prod(spacing)) / 1000.0)


# lesion-wise (lesions.py: which official definition each follows); a missing prediction scores as
# the official package's missing cases: no lesion found, HD95 374
register_metric(
    Metric("tp_lesions", "TP lesions", failure=0.0, decimals=2, group="lesion"),
    Metric("fp_lesions", "FP lesions", failure=0.0, decimals=2, group="lesion"),
    Metric("fn_lesions", "FN lesions", failure=0.0, decimals=2, group="lesion"),
    Metric("rq", "RQ", failure=0.0, group="lesion"),
    Metric("sq_dice", "SQ (Dice)", failure=0.0, group="lesion"),
    Metric("pq_dice", "PQ (Dice)", failure=0.0, group="lesion"),
)(lambda p, g, spacing: panoptic_metrics(p, g))
register_metric(
    Metric("lesion_dice", "Lesion-wise Dice", failure=0.0, group="lesion"),
    Metric("lesion_hd95", "Lesion-wise HD95 (mm)", failure=LESION_HD95_PENALTY, decimals=2, group="lesion"),
)(brats2023_lesion_metrics)


def dice_torch(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Batched Dice on boolean tensors, on the tensors' device.

    Args:
        pred: Boolean tensor of shape ``(B, ...)``.
        gt: Boolean tensor of the same shape and device.

    Returns:
        Float32 tensor of shape ``(B,)``: Dice over all non-batch dimensions of each element; 1.0 when
        both masks of an element are empty, 0.0 when exactly one is.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred has shape {tuple(pred.shape)}, gt has shape {tuple(gt.shape)}")
    if pred.dtype != torch.bool or gt.dtype != torch.bool:
        raise TypeError(f"dice_torch expects boolean tensors, got {pred.dtype} and {gt.dtype}")
    if pred.ndim < 1:
        raise ValueError("dice_torch expects a batch dimension, got a 0-dim tensor")
    b = pred.shape[0]
    p = pred.reshape(b, -1)
    g = gt.reshape(b, -1)
    inter = (p & g).sum(dim=1)
    den = p.sum(dim=1) + g.sum(dim=1)
    ratio = (2 * inter).to(torch.float32) / den.clamp_min(1).to(torch.float32)
    return torch.where(den > 0, ratio, torch.ones_like(ratio))
