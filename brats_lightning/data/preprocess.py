"""Preprocessing of loaded volumes: percentile clipping, N4 bias correction, z-score, brain crop.

Havaei et al. Sec. 4 (after Tustison et al.): remove the 1% highest and lowest intensities, N4ITK
bias correction of T1 and T1c, then normalise every channel by its mean and standard deviation.
Shen et al. Sec. 3.1: per-image zero mean, unit variance. Statistics are computed inside the brain
(BraTS images are skull-stripped: the background is exactly 0) and the background is set to 0.

Cropping keeps the brain's bounding box plus a margin; the box is recorded (in RAS voxel indices)
so that predictions go back to the original grid (:func:`uncrop`).

:func:`preprocess_case` is the whole pipeline of one case in memory (read, clip, N4, z-score,
symmetry maps): training stores its output in the cache (:mod:`brats_lightning.data.cache`) and
prediction uses it directly, so both see exactly the same inputs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field, StrictBool, field_validator

from brats_lightning.data.labels import LabelConvention
from brats_lightning.data.readers import MODALITIES, CaseFiles, Volume, load_case
from brats_lightning.errors import ConfigError, DataError
from brats_lightning.schema import Int, Name, Number, Strict, validate

if TYPE_CHECKING:
    import torch

__all__ = [
    "PreprocessConfig",
    "SymmetryConfig",
    "Preprocessed",
    "preprocess_case",
    "symmetry_channels",
    "brain_mask",
    "clip_percentiles",
    "n4_correct",
    "zscore",
    "histogram_standardise",
    "brain_bbox",
    "crop",
    "uncrop",
]


# sequence options: a list (from YAML or JSON) or a tuple, each item of the declared type
Percentiles = Annotated[
    tuple[Annotated[Number, Field(ge=0, le=100)], ...], Field(strict=False, min_length=2, max_length=2)
]
ModalityNames = Annotated[tuple[Name, ...], Field(strict=False, max_length=4)]
Iterations = Annotated[
    tuple[Annotated[Int, Field(ge=1, le=1000)], ...], Field(strict=False, min_length=1, max_length=8)
]


class PreprocessConfig(Strict):
    """Preprocessing options (part of the on-disk cache key; Havaei et al. Sec. 4, Shen et al. Sec. 3.1).

    Declared once: the data module's ``data.preprocess``, a checkpoint's stored data configuration and the
    cache key all use this model (types and ranges checked, unknown keys refused).

    Attributes:
        clip_percentiles: ``(low, high)`` percentiles clipped inside the brain, ``None`` to skip.
        n4: modalities to bias-correct with N4ITK (Havaei: ``("t1", "t1c")``); empty to skip.
        n4_shrink: N4 works on a grid shrunk by this factor (speed), the field is applied at full size.
        n4_iterations: iterations per fitting level.
        zscore: normalise every channel inside the brain.
        histogram: instead of the z-score, standardise every channel's histogram inside the brain
            (:func:`histogram_standardise`: its deciles mapped onto a standard normal's, against scanner shift).
        margin: voxels kept around the brain's bounding box.
    """

    clip_percentiles: Percentiles | None = (1.0, 99.0)
    n4: ModalityNames = ()
    n4_shrink: Annotated[Int, Field(ge=1, le=16)] = 4
    n4_iterations: Iterations = (50, 50, 30)
    zscore: StrictBool = True
    histogram: StrictBool = False
    margin: Annotated[Int, Field(ge=0, le=64)] = 2

    @field_validator("clip_percentiles")
    @classmethod
    def _ordered(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"the low percentile must be below the high one, got {list(v)}")
        return v

    @field_validator("n4")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if m not in MODALITIES]
        if bad:
            raise ValueError(f"unknown modalities {bad} (expected some of {list(MODALITIES)})")
        return v

    def to_dict(self) -> dict:
        """Plain values (lists, not tuples): the cache key and what a checkpoint stores."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "data.preprocess") -> PreprocessConfig:
        """The options ``d`` (from a config or a checkpoint) checked.

        Raises:
            ConfigError: a value of the wrong type or range, or an unknown key; names ``source``.
        """
        return validate(cls, dict(d or {}), source, ConfigError)


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


#: the percentiles whose intensities :func:`histogram_standardise` maps onto a standard normal's quantiles
HISTOGRAM_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def histogram_standardise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Standardise every channel's histogram inside ``mask``; 0 outside.

    Nyul and Udupa's piecewise-linear histogram standardisation (1999), per case and with a fixed standard
    scale: the channel's intensities at :data:`HISTOGRAM_PERCENTILES` inside the brain are mapped linearly, piece
    by piece, onto the standard normal's quantiles at those percentiles, and beyond the outer landmarks the end
    pieces' slopes go on (the brightest voxels, an enhancing rim among them, keep their contrast). Two scanners
    whose intensities differ by any monotone distortion of the brain's histogram give the same deciles, where a
    z-score only matches their mean and spread. Normal data is left as its z-score.
    """
    from scipy.stats import norm

    standard = norm.ppf(np.asarray(HISTOGRAM_PERCENTILES) / 100.0)
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        v = image[c][mask].astype(np.float64)
        marks = np.percentile(v, HISTOGRAM_PERCENTILES)
        keep = np.concatenate([[True], np.diff(marks) > 1e-12 * max(1.0, float(np.abs(marks).max()))])
        x, y = marks[keep], standard[keep]
        if x.size < 2:  # a constant channel
            continue
        mapped = np.interp(v, x, y)
        low, high = v < x[0], v > x[-1]
        mapped[low] = y[0] + (v[low] - x[0]) * (y[1] - y[0]) / (x[1] - x[0])
        mapped[high] = y[-1] + (v[high] - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
        out[c][mask] = mapped
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


class SymmetryConfig(Strict):
    """Options of the symmetry channels (Shen et al. Sec. 2.2; :func:`brats_lightning.data.symmetry.symmetry_maps`).

    Declared once: the data module's ``data.symmetry`` / ``data.symmetry_options``, a checkpoint's stored data
    configuration and the cache key all use this model.

    Attributes:
        enabled: append one symmetry map per modality (Shen et al. Sec. 2.2).
        window: search window side (odd).
        kernel_size: Gaussian kernel side (odd).
        sigma: Gaussian sigma.
        scale: sigmoid scale of the difference (z-scored intensity units).
        min_angle: tilts below this many degrees are not resampled.
        device: where to compute them (``"auto"``: CUDA when available).
        axis_modality: the modality on which the mid-sagittal axis is found (Shen et al.: T1).
    """

    enabled: StrictBool = False
    window: Annotated[Int, Field(ge=1, le=63)] = 11
    kernel_size: Annotated[Int, Field(ge=1, le=31)] = 5
    sigma: Annotated[Number, Field(gt=0, le=20)] = 1.1
    scale: Annotated[Number, Field(gt=0, le=100)] = 1.0
    min_angle: Annotated[Number, Field(ge=0, le=45)] = 1.0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")] = "auto"
    axis_modality: Name = "t1"

    @field_validator("window", "kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError("must be odd")
        return v

    @field_validator("axis_modality")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MODALITIES:
            raise ValueError(f"unknown modality {v!r} (expected one of {list(MODALITIES)})")
        return v

    def key_dict(self) -> dict:
        """What changes the maps (the cache key): every option but the device; nothing when they are off."""
        d = self.model_dump(mode="json", exclude={"device"})
        return d if self.enabled else {"enabled": False}

    def replace(self, **changes: Any) -> SymmetryConfig:
        """A copy with ``changes``, checked."""
        return type(self).model_validate({**self.model_dump(), **changes})


def symmetry_channels(
    slices: torch.Tensor, mask: torch.Tensor, modalities: Sequence[str], sym: SymmetryConfig
) -> tuple[torch.Tensor, dict]:
    """Shen et al.'s symmetry maps of a whole volume, on the slices' device, stored centred (map - 0.5).

    Args:
        slices: ``(Z, C, X, Y)`` float32 z-scored images (a torch tensor).
        mask: ``(Z, X, Y)`` brain mask.
        modalities: the channels' modalities (the axis is found on T1).
        sym: the options.

    Returns:
        ``(Z, C, X, Y)`` maps in ``[-0.5, 0.5]`` (0 = symmetric, like the zero background) and the axis as a
        dict.
    """
    from brats_lightning.data.symmetry import estimate_axis, symmetry_maps

    if sym.axis_modality not in modalities:
        raise ConfigError(
            f"symmetry maps find the mid-sagittal axis on {sym.axis_modality}, which is not among the modalities "
            f"{list(modalities)}: add it, or set data.symmetry_options.axis_modality to one of them"
        )
    ref = list(modalities).index(sym.axis_modality)
    ax = estimate_axis(slices[:, ref], mask)
    maps = symmetry_maps(
        slices,
        mask,
        ref_channel=ref,
        axis=ax,
        window=sym.window,
        kernel_size=sym.kernel_size,
        sigma=sym.sigma,
        scale=sym.scale,
        min_angle=sym.min_angle,
    )
    return maps - 0.5, {"angle": ax.angle, "center_h": ax.center_h, "center_w": ax.center_w}


def _symmetry_device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass
class Preprocessed:
    """A case after preprocessing, in RAS order and full size (before cropping).

    Attributes:
        volume: the loaded case (original geometry and header).
        image: ``(C, X, Y, Z)`` float32 channels (images, then centred symmetry maps if enabled).
        mask: ``(X, Y, Z)`` brain mask.
        label: ``(X, Y, Z)`` internal classes, or ``None``.
        box: the crop box around the brain (RAS indices).
        meta: geometry, channels, label counts (see :mod:`brats_lightning.data.cache`).
        timings: seconds spent reading (``read``), preprocessing (``preprocess``: clipping, N4,
            z-score) and computing symmetry maps (``symmetry``).
    """

    volume: Volume
    image: np.ndarray
    mask: np.ndarray
    label: np.ndarray | None
    box: tuple[tuple[int, int], ...]
    meta: dict
    timings: dict[str, float] = field(default_factory=dict)


def preprocess_case(
    case: CaseFiles, convention: LabelConvention, prep: PreprocessConfig, sym: SymmetryConfig
) -> Preprocessed:
    """Load and preprocess one case in memory (used for the cache and for prediction).

    Raises:
        DataError: unreadable or inconsistent files, an empty image, unknown label values.
    """
    t0 = time.perf_counter()
    vol = load_case(case)
    t1 = time.perf_counter()
    mask = vol.mask if vol.mask is not None else brain_mask(vol.image)
    first = next(iter(case.images.values()))
    if not mask.any():
        raise DataError(f"{first}: the image is empty (no non-zero voxel, no brain to segment)")
    img = vol.image
    if prep.clip_percentiles is not None:
        img = clip_percentiles(img, mask, *prep.clip_percentiles)
    for modality in prep.n4:
        if modality in vol.modalities:
            c = vol.modalities.index(modality)
            img[c] = n4_correct(img[c], mask, prep.n4_shrink, prep.n4_iterations, vol.spacing)
    if prep.histogram:
        img = histogram_standardise(img, mask)
    elif prep.zscore:
        img = zscore(img, mask)
    else:
        img = np.where(mask, img, 0).astype(np.float32)
    channels = list(vol.modalities)
    axis = None
    t2 = time.perf_counter()
    if sym.enabled:
        import torch

        dev = _symmetry_device(sym.device)
        x = torch.from_numpy(img).to(dev).permute(3, 0, 1, 2)
        m = torch.from_numpy(mask).to(dev).permute(2, 0, 1)
        maps, axis = symmetry_channels(x, m, vol.modalities, sym)
        img = np.concatenate([img, maps.permute(1, 2, 3, 0).cpu().numpy()], axis=0)
        channels += [f"sym_{m}" for m in vol.modalities]
    t3 = time.perf_counter()
    label = None
    counts = None
    if vol.label is not None:
        label = convention.to_internal(vol.label, source=str(case.label))
        counts = np.bincount(label[mask].ravel(), minlength=convention.num_classes).tolist()
    box = brain_bbox(mask, prep.margin)
    meta = {
        "case_id": case.case_id,
        "layout": case.layout,
        "convention": convention.name,
        "modalities": list(vol.modalities),
        "channels": channels,
        "box": [list(b) for b in box],
        "ras_shape": list(mask.shape),
        "shape": list(vol.shape),
        "affine": vol.affine.tolist(),
        "ornt": vol.ornt.tolist(),
        "spacing": list(vol.spacing),
        "symmetry_axis": axis,
        "label_counts": counts,
    }
    timings = {"read": t1 - t0, "preprocess": t2 - t1, "symmetry": t3 - t2}
    return Preprocessed(vol, img, mask, label, box, meta, timings)
