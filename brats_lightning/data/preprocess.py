"""Preprocessing of loaded volumes: percentile clipping, N4 bias correction, z-score, brain crop.

Havaei et al. Sec. 4 (after Tustison et al.): remove the 1% highest and lowest intensities, N4ITK
bias correction of T1 and T1c, then normalise every channel by its mean and standard deviation.
Shen et al. Sec. 3.1: per-image zero mean, unit variance. Statistics are computed inside the brain
(BraTS images are skull-stripped: the background is exactly 0) and the background is set to 0.

Cropping keeps the brain's bounding box plus a margin; the box is recorded (in RAS voxel indices)
so that predictions go back to the original grid (:func:`uncrop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "PreprocessConfig",
    "brain_mask",
    "clip_percentiles",
    "n4_correct",
    "zscore",
    "brain_bbox",
    "crop",
    "uncrop",
]


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing options (part of the on-disk cache key).

    Attributes:
        clip_percentiles: ``(low, high)`` percentiles clipped inside the brain, ``None`` to skip.
        n4: modalities to bias-correct with N4ITK (Havaei: ``("t1", "t1c")``); empty to skip.
        n4_shrink: N4 works on a grid shrunk by this factor (speed), the field is applied at full size.
        n4_iterations: iterations per fitting level.
        zscore: normalise every channel inside the brain.
        margin: voxels kept around the brain's bounding box.
    """

    clip_percentiles: tuple[float, float] | None = (1.0, 99.0)
    n4: tuple[str, ...] = ()
    n4_shrink: int = 4
    n4_iterations: tuple[int, ...] = (50, 50, 30)
    zscore: bool = True
    margin: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel of a skull-stripped ``(C, ...)`` image is non-zero."""
    return np.any(image != 0, axis=0)


def clip_percentiles(image: np.ndarray, mask: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Clip every channel to its ``[low, high]`` intensity percentiles inside ``mask`` (Havaei Sec. 4)."""
    out = image.astype(np.float32, copy=True)
    if not mask.any():
        return out
    for c in range(out.shape[0]):
        lo, hi = np.percentile(out[c][mask], [low, high])
        np.clip(out[c], lo, hi, out=out[c])
        out[c][~mask] = 0.0
    return out


def n4_correct(
    channel: np.ndarray,
    mask: np.ndarray,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """N4ITK bias-field correction of one 3D channel (SimpleITK), fitted inside ``mask``.

    The field is fitted on a grid shrunk by ``shrink`` and applied at full resolution.
    """
    import SimpleITK as sitk

    if not mask.any():
        return channel.astype(np.float32, copy=True)
    data = np.ascontiguousarray(channel, dtype=np.float32)
    # SimpleITK arrays are (z, y, x): transpose so that spacing follows the axes.
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0))
    img.SetSpacing([float(s) for s in spacing])
    msk = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8).transpose(2, 1, 0))
    msk.CopyInformation(img)
    # N4 needs positive intensities.
    offset = float(max(0.0, -data[mask].min()) + 1.0)
    img_pos = sitk.Add(img, offset)
    small = sitk.Shrink(img_pos, [shrink] * 3) if shrink > 1 else img_pos
    small_mask = sitk.Shrink(msk, [shrink] * 3) if shrink > 1 else msk
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(img_pos)
    corrected = img_pos / sitk.Exp(log_field) - offset
    out = sitk.GetArrayFromImage(corrected).transpose(2, 1, 0).astype(np.float32)
    out[~mask] = 0.0
    return out


def zscore(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normalise every channel of ``(C, ...)`` to zero mean, unit variance inside ``mask``; 0 outside."""
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        v = image[c][mask].astype(np.float64)
        std = v.std()
        out[c][mask] = (v - v.mean()) / (std if std > 0 else 1.0)
    return out


def brain_bbox(mask: np.ndarray, margin: int = 0) -> tuple[tuple[int, int], ...]:
    """Bounding box ``((start, stop), ...)`` of ``mask`` grown by ``margin`` and clipped to the array.

    An empty mask gives the whole array.
    """
    box = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.nonzero(mask.any(axis=other))[0]
        if idx.size == 0:
            return tuple((0, s) for s in mask.shape)
        box.append((max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[ax])))
    return tuple(box)


def crop(arr: np.ndarray, box: Sequence[tuple[int, int]]) -> np.ndarray:
    """Crop the trailing ``len(box)`` axes of ``arr`` to ``box``."""
    lead = (slice(None),) * (arr.ndim - len(box))
    return arr[lead + tuple(slice(a, b) for a, b in box)]


def uncrop(arr: np.ndarray, box: Sequence[tuple[int, int]], shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Paste a cropped array back into an array of spatial ``shape`` (the inverse of :func:`crop`)."""
    lead = arr.shape[: arr.ndim - len(box)]
    out = np.full((*lead, *shape), fill, dtype=arr.dtype)
    out[(slice(None),) * len(lead) + tuple(slice(a, b) for a, b in box)] = arr
    return out
