"""Post-processing of predicted segmentations (Havaei et al. Sec. 4).

"A simple method based on connected components was implemented to remove flat blobs which might
appear in the predictions due to bright corners of the brains close to the skull." The paper gives
no thresholds; we remove every 3D connected component of the predicted tumour (26-connectivity)
whose volume is below ``min_volume_mm3`` or which spans fewer than ``min_slices`` axial slices
(a flat blob). ``largest_only`` keeps only the largest component (nnU-Net's rule, Isensee et al.
2021, for single tumours), and with ``keep_within_mm`` also every component within that distance of it
(the satellites of a multifocal tumour). :class:`~brats_lightning.callbacks.postprocess.TunePostprocess` chooses
among these rules on the validation cases.

Per region (``tc``, ``et``: :class:`ComponentRule`), the same rules apply to the connected components of the
tumour core and of the enhancing tumour, one level down the regions' nesting: a removed core component becomes
edema, a removed enhancing component necrosis (so the whole tumour, or the core, keeps its voxels).

:func:`apply_cleanup` adds the BraTS rule of Isensee et al. (BraTS 2018 and nnU-Net's BraTS entry):
a case whose predicted enhancing tumour is smaller than ``et_min_volume_mm3`` has it relabelled
necrosis (the challenge scores an empty enhancing prediction of a case without enhancing tumour as
Dice 1, a few false voxels as Dice 0). :func:`choose_cleanup` chooses both
on out-of-fold segmentations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, StrictBool
from scipy import ndimage

from brats_lightning.data.labels import LabelConvention
from brats_lightning.errors import CheckpointError
from brats_lightning.schema import Int, Number, Strict, validate
from brats_lightning.stats import paired_difference

__all__ = [
    "NO_CLEANUP",
    "ComponentRule",
    "PostprocessOptions",
    "check_postprocess",
    "apply_cleanup",
    "candidates",
    "MIN_FOLDS",
    "choose_cleanup",
    "choose_nested",
    "choose_within_tolerance",
    "enhancing_to_necrosis",
    "et_rule_candidates",
    "is_noop",
    "region_components",
    "region_rule_candidates",
    "remove_small_components",
    "removed_components",
]


class ComponentRule(Strict):
    """Which connected components of a region are kept (:func:`region_components`): those of at least
    ``min_volume_mm3``, or with ``largest_only`` the largest and those within ``keep_within_mm`` of it."""

    min_volume_mm3: Annotated[Number, Field(ge=0, le=1e7)] = 0.0
    largest_only: StrictBool = False
    keep_within_mm: Annotated[Number, Field(ge=0, le=1000)] = 0.0


class PostprocessOptions(Strict):
    """Options of :func:`~brats_lightning.inference.cleanup.apply_cleanup` (Havaei et al. Sec. 4; the BraTS ET rule).

    ``min_volume_mm3`` to ``keep_within_mm`` act on the whole tumour's components; ``tc`` and ``et`` on the core's
    and the enhancing tumour's (``None``: none).
    """

    min_volume_mm3: Annotated[Number, Field(ge=0, le=1e7)] = 500.0
    min_slices: Annotated[Int, Field(ge=0, le=1000)] = 3
    largest_only: StrictBool = False
    keep_within_mm: Annotated[Number, Field(ge=0, le=1000)] = 0.0
    tc: ComponentRule | None = None
    et: ComponentRule | None = None
    et_min_volume_mm3: Annotated[Number, Field(ge=0, le=1e7)] = 0.0


def check_postprocess(data: Any, source: str | Path) -> dict[str, Any] | None:
    """A stored clean-up (``None``: none) as a validated plain dict.

    Raises:
        CheckpointError: naming ``source`` and the problem.
    """
    if data is None:
        return None
    return validate(PostprocessOptions, data, f"{source} (postprocess)", CheckpointError).model_dump()


def remove_small_components(
    classes: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_volume_mm3: float = 500.0,
    min_slices: int = 3,
    axial_axis: int = 2,
    largest_only: bool = False,
    keep_within_mm: float = 0.0,
) -> np.ndarray:
    """Set to background the small or flat connected components of the tumour (all non-zero classes).

    Args:
        classes: ``(X, Y, Z)`` class map (0 = background).
        spacing: voxel size in mm.
        min_volume_mm3: components smaller than this are removed.
        min_slices: components spanning fewer axial slices are removed.
        axial_axis: the axis across axial slices.
        largest_only: also remove every component but the largest (and, with ``keep_within_mm``, those near it).
        keep_within_mm: with ``largest_only``, also keep every component (not removed by size or flatness)
            whose nearest voxel is within this distance of the largest component (0: the largest only).

    Returns:
        A copy of ``classes`` without the removed components.
    """
    out = np.array(classes, copy=True)
    out[removed_components(out > 0, spacing, min_volume_mm3, min_slices, axial_axis, largest_only, keep_within_mm)] = 0
    return out


def removed_components(
    mask: np.ndarray,
    spacing: Sequence[float],
    min_volume_mm3: float,
    min_slices: int = 0,
    axial_axis: int = 2,
    largest_only: bool = False,
    keep_within_mm: float = 0.0,
) -> np.ndarray:
    """The voxels of ``mask``'s connected components (26-connectivity) that a rule removes: those under
    ``min_volume_mm3`` or spanning fewer than ``min_slices`` axial slices, and with ``largest_only`` all but the
    largest and those whose nearest voxel is within ``keep_within_mm`` of it."""
    if not mask.any():
        return np.zeros(mask.shape, bool)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    voxel = float(np.prod(spacing))
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel
    objects = ndimage.find_objects(lab)
    remove = np.zeros(n + 1, bool)
    for i, sl in enumerate(objects, start=1):
        extent = sl[axial_axis].stop - sl[axial_axis].start
        remove[i] = sizes[i] < min_volume_mm3 or extent < min_slices
    if largest_only:
        keep = int(np.argmax(sizes[1:])) + 1
        near = np.zeros(n + 1, bool)
        if keep_within_mm > 0 and n > 1:
            # distance (mm) of every voxel to the largest component, and each component's nearest voxel
            dist = ndimage.distance_transform_edt(lab != keep, sampling=tuple(float(v) for v in spacing))
            nearest = ndimage.minimum(dist, lab, index=np.arange(1, n + 1))
            near[1:] = np.asarray(nearest) <= keep_within_mm
        remove[1:] |= ~near[1:]
        remove[keep] = False
    return remove[lab]


def region_components(
    classes: np.ndarray, convention: LabelConvention, region: str, rule: dict, spacing: Sequence[float]
) -> np.ndarray:
    """``classes`` with the components of ``region`` (``"tc"`` or ``"et"``) that ``rule`` removes
    (:class:`ComponentRule`) relabelled one level down: a core component becomes edema, an enhancing one
    necrosis. Returns ``classes`` itself when nothing changes.

    Raises:
        ValueError: the convention's regions do not nest one class deep (BRATS 2013).
    """
    from brats_lightning.inference.decision import region_levels

    edema, necrosis, _ = region_levels(convention)
    mask = convention.region_masks(classes)[region]
    gone = removed_components(
        mask,
        spacing,
        float(rule.get("min_volume_mm3", 0.0)),
        largest_only=bool(rule.get("largest_only", False)),
        keep_within_mm=float(rule.get("keep_within_mm", 0.0)),
    )
    if not gone.any():
        return classes
    out = np.array(classes, copy=True)
    out[gone] = edema if region == "tc" else necrosis
    return out


def enhancing_to_necrosis(
    classes: np.ndarray, convention: LabelConvention, spacing: Sequence[float], min_volume_mm3: float
) -> np.ndarray:
    """Relabel the whole enhancing tumour as necrosis when its volume is below ``min_volume_mm3`` (BraTS rule).

    The necrosis class is the convention's first tumour-core class that is not enhancing (NCR/NET,
    or BRATS 2013's necrosis). Returns ``classes`` itself when nothing changes.
    """
    (et,) = convention.region_classes("et")
    core = [c for c in convention.region_classes("tc") if c != et]
    enhancing = classes == et
    volume = float(enhancing.sum()) * float(np.prod(spacing))
    if min_volume_mm3 <= 0 or volume == 0 or volume >= min_volume_mm3 or not core:
        return classes
    out = np.array(classes, copy=True)
    out[enhancing] = core[0]
    return out


def apply_cleanup(
    classes: np.ndarray, spacing: Sequence[float], convention: LabelConvention, options: dict | None
) -> np.ndarray:
    """The clean-up ``options`` describe (:class:`PostprocessOptions`) of ``(X, Y, Z)`` classes.

    The tumour's small, flat or (with ``largest_only``) secondary components are removed
    (:func:`remove_small_components`; skipped when ``min_volume_mm3`` and ``min_slices`` are 0 and
    ``largest_only`` is off), then the enhancing-to-necrosis rule applies (``et_min_volume_mm3``).
    """
    if not options:
        return classes
    opts = dict(options)
    et_min = float(opts.pop("et_min_volume_mm3", 0.0) or 0.0)
    rules = {r: opts.pop(r, None) for r in ("tc", "et")}
    out = classes
    if opts.get("largest_only") or float(opts.get("min_volume_mm3", 500.0)) > 0 or int(opts.get("min_slices", 3)) > 1:
        out = remove_small_components(classes, spacing, **opts)
    for region, rule in rules.items():
        if rule:
            out = region_components(out, convention, region, rule, spacing)
    return enhancing_to_necrosis(out, convention, spacing, et_min) if et_min > 0 else out


# ------------------------------------------------------------------------------------------ choosing


#: the clean-up that changes nothing (the first candidate of every comparison)
NO_CLEANUP: dict = {
    "min_volume_mm3": 0.0,
    "min_slices": 0,
    "largest_only": False,
    "keep_within_mm": 0.0,
    "tc": None,
    "et": None,
    "et_min_volume_mm3": 0.0,
}


def candidates(
    min_volumes_mm3: Sequence[float], largest_only: bool = True, keep_within_mm: Sequence[float] = ()
) -> list[dict]:
    """Clean-ups of the tumour's connected components to compare, weakest first: none, each volume threshold,
    the largest component with the components within each distance of it (farthest first), then the largest
    component only.

    Examples:
        >>> [c["min_volume_mm3"] for c in candidates([500, 100], largest_only=False)]
        [0.0, 100.0, 500.0]
        >>> [c["keep_within_mm"] for c in candidates([], keep_within_mm=[10, 40])]
        [0.0, 40.0, 10.0, 0.0]
    """
    out = [dict(NO_CLEANUP)]
    out += [{**NO_CLEANUP, "min_volume_mm3": float(v), "min_slices": 1} for v in sorted(min_volumes_mm3)]
    if largest_only:
        near = sorted((float(d) for d in keep_within_mm), reverse=True)
        out += [{**NO_CLEANUP, "largest_only": True, "keep_within_mm": d} for d in near]
        out.append({**NO_CLEANUP, "largest_only": True})
    return out


def is_noop(options: dict | None) -> bool:
    """Whether the clean-up ``options`` changes nothing (``None`` included)."""
    return not options or {**NO_CLEANUP, **options} == NO_CLEANUP


def choose_within_tolerance(scores: Sequence[float], tolerance: float) -> int:
    """Index of the chosen candidate (validation rule of
    :class:`~brats_lightning.callbacks.postprocess.TunePostprocess`): the last (strongest) within
    ``tolerance`` of the best score.
    """
    best = max(scores)
    return max(i for i, s in enumerate(scores) if s >= best - tolerance)


def region_rule_candidates(
    base: dict, region: str, min_volumes_mm3: Sequence[float], keep_within_mm: Sequence[float] = ()
) -> list[dict]:
    """``base`` with each rule for the components of ``region`` (``"tc"``, ``"et"``): none first, then each volume
    threshold, the largest with the components within each distance of it (farthest first), the largest only.

    Examples:
        >>> [c["et"] for c in region_rule_candidates(NO_CLEANUP, "et", [100], [20])][:2]
        [None, {'min_volume_mm3': 100.0, 'largest_only': False, 'keep_within_mm': 0.0}]
    """
    none = {"min_volume_mm3": 0.0, "largest_only": False, "keep_within_mm": 0.0}
    rules: list[dict | None] = [None]
    rules += [{**none, "min_volume_mm3": float(v)} for v in sorted(min_volumes_mm3)]
    rules += [{**none, "largest_only": True, "keep_within_mm": float(d)} for d in sorted(keep_within_mm, reverse=True)]
    rules.append({**none, "largest_only": True})
    return [{**base, region: rule} for rule in rules]


def et_rule_candidates(base: dict, et_volumes_mm3: Sequence[float]) -> list[dict]:
    """``base`` with each threshold of the enhancing-to-necrosis rule (0 = off, first)."""
    off = {**base, "et_min_volume_mm3": 0.0}
    return [off] + [{**base, "et_min_volume_mm3": float(v)} for v in sorted(et_volumes_mm3)]


#: the fewest folds a clean-up is chosen on: with fewer, the gain's interval says nothing and none is chosen
MIN_FOLDS = 3


def choose_cleanup(scores: np.ndarray, folds: np.ndarray, use: np.ndarray) -> tuple[int, dict[str, Any]]:
    """The candidate whose gain over the first (no clean-up) is beyond its uncertainty over the folds.

    A candidate's gain is the paired difference of the per-fold mean scores (candidate minus none) over the
    folds of the cases in ``use``; it is eligible when the 95% t interval of that gain lies above zero
    (:func:`brats_lightning.stats.paired_difference`), and the eligible one with the largest gain is chosen.
    With fewer than :data:`MIN_FOLDS` folds no interval can vouch for a gain: nothing is chosen, and the
    figures say so (``refused``).

    Args:
        scores: ``(cases, candidates)`` score of every candidate on every case.
        folds: ``(cases,)`` the fold of every case.
        use: ``(cases,)`` boolean, the cases the choice may look at.

    Returns:
        The chosen index (0: no clean-up) and the figures: per candidate the mean gain over the folds, its
        standard deviation and standard error and its 95% interval; the number of folds.
    """
    kept = np.flatnonzero(use)
    fold_ids = sorted(set(folds[kept].tolist()))
    per_fold = np.stack([scores[kept[folds[kept] == f]].mean(0) for f in fold_ids])  # (F, candidates)
    gains = [paired_difference(per_fold[:, i], per_fold[:, 0]) for i in range(scores.shape[1])]
    figures: dict[str, Any] = {
        "gain": [g.mean for g in gains],
        "sd": [g.sd for g in gains],
        "se": [g.se for g in gains],
        "ci95_low": [g.low for g in gains],
        "ci95_high": [g.high for g in gains],
        "folds": len(fold_ids),
        "rule": "the largest gain whose 95% t interval over the folds lies above zero (paired, per fold)",
    }
    if len(fold_ids) < MIN_FOLDS:
        figures["refused"] = f"{len(fold_ids)} fold(s): fewer than {MIN_FOLDS}, no clean-up is chosen"
        return 0, figures
    eligible = [i for i in range(1, scores.shape[1]) if gains[i].above(0.0)]
    best = max(eligible, key=lambda i: gains[i].mean) if eligible else 0
    return best, figures


def choose_nested(scores: np.ndarray, folds: np.ndarray) -> tuple[int, dict[int, int], dict[str, Any]]:
    """The choice on every case, and for each fold the choice made without that fold's cases (nested: a
    case's clean-up is chosen on the other folds only).

    Returns:
        The final choice, fold -> its nested choice, and the final choice's figures.
    """
    final, figures = choose_cleanup(scores, folds, np.ones(len(folds), bool))
    nested = {int(k): choose_cleanup(scores, folds, folds != k)[0] for k in sorted(set(folds.tolist()))}
    return final, nested, figures
