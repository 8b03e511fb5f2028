"""On-disk cache of preprocessed cases.

Loading a BraTS case (four gzipped NIfTI files), clipping, z-scoring and computing symmetry maps
takes seconds; training reads thousands of slices. So every case is prepared once per
preprocessing configuration and stored as memory-mappable ``.npy`` arrays in slice-major layout:

``<cache_dir>/<dataset>-<key>/<case_id>/``
    ``image.npy``  ``(Z, C, X, Y)`` float16, cropped to the brain's bounding box
    ``label.npy``  ``(Z, X, Y)`` uint8 internal classes (labelled cases only)
    ``mask.npy``   ``(Z, X, Y)`` bool brain mask
    ``meta.json``  geometry (box, shapes, affine, orientation, spacing), channels, label counts,
                   and the size and mtime of every source file (a changed source is re-prepared)

``key`` hashes the data root, layout, modalities, convention and every preprocessing option, so a
second run with the same configuration does no work, and a different one never reads stale data.
Each case folder is written under a temporary name and renamed into place (atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats_lightning.data.io import CaseFiles, DataError, Volume, load_case
from brats_lightning.data.labels import LabelConvention
from brats_lightning.data.preprocess import (
    PreprocessConfig,
    brain_bbox,
    brain_mask,
    clip_percentiles,
    crop,
    n4_correct,
    zscore,
)

__all__ = [
    "SymmetryConfig",
    "Preprocessed",
    "PreparedCase",
    "cache_key",
    "preprocess_case",
    "prepare_case",
    "load_prepared",
    "is_fresh",
]

CACHE_VERSION = 1


@dataclass(frozen=True)
class SymmetryConfig:
    """Options of the symmetry channels (see :func:`brats_lightning.data.symmetry.symmetry_maps`).

    Attributes:
        enabled: append one symmetry map per modality (Shen et al. Sec. 2.2).
        window: search window side.
        kernel_size: Gaussian kernel side.
        sigma: Gaussian sigma.
        scale: sigmoid scale of the difference (z-scored intensity units).
        min_angle: tilts below this many degrees are not resampled.
        device: where to compute them (``"auto"``: CUDA when available).
    """

    enabled: bool = False
    window: int = 11
    kernel_size: int = 5
    sigma: float = 1.1
    scale: float = 1.0
    min_angle: float = 1.0
    device: str = "auto"

    def key_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "device"}
        return d if self.enabled else {"enabled": False}


@dataclass
class PreparedCase:
    """A preprocessed case, arrays memory-mapped from the cache.

    Attributes:
        case_id: case identifier.
        folder: the case's cache folder.
        image: ``(Z, C, X, Y)`` float16 (memory-mapped).
        label: ``(Z, X, Y)`` uint8 internal classes, or ``None``.
        mask: ``(Z, X, Y)`` bool brain mask.
        meta: geometry and provenance (see module docstring).
    """

    case_id: str
    folder: Path
    image: np.ndarray
    label: np.ndarray | None
    mask: np.ndarray
    meta: dict = field(repr=False)

    @property
    def box(self) -> tuple[tuple[int, int], ...]:
        """The crop box in RAS voxel indices ``((x0, x1), (y0, y1), (z0, z1))``."""
        return tuple(tuple(b) for b in self.meta["box"])  # type: ignore[return-value]

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["ras_shape"])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.meta["spacing"])  # type: ignore[return-value]


def cache_key(
    root: str | Path,
    layout: str,
    modalities: Sequence[str],
    convention: str,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
) -> str:
    """A short hash of everything that changes the prepared arrays."""
    payload = {
        "version": CACHE_VERSION,
        "root": str(Path(root).resolve()),
        "layout": layout,
        "modalities": list(modalities),
        "convention": convention,
        "preprocess": prep.to_dict(),
        "symmetry": sym.key_dict(),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _sources(case: CaseFiles) -> dict[str, list]:
    files = dict(case.images)
    if case.label is not None:
        files["label"] = case.label
    if case.mask is not None:
        files["mask"] = case.mask
    out = {}
    for k, p in files.items():
        st = Path(p).stat()
        out[k] = [str(Path(p).resolve()), st.st_size, int(st.st_mtime)]
    return out


def is_fresh(folder: Path, case: CaseFiles) -> bool:
    """Whether ``folder`` holds a complete prepared case whose source files are unchanged."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return False
    try:
        meta = json.loads(meta_file.read_text())
        return meta.get("sources") == _sources(case)
    except (OSError, json.JSONDecodeError):
        return False


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
        meta: geometry, channels, label counts (see the module docstring).
    """

    volume: Volume
    image: np.ndarray
    mask: np.ndarray
    label: np.ndarray | None
    box: tuple[tuple[int, int], ...]
    meta: dict


def preprocess_case(
    case: CaseFiles, convention: LabelConvention, prep: PreprocessConfig, sym: SymmetryConfig
) -> Preprocessed:
    """Load and preprocess one case in memory (used for the cache and for prediction).

    Raises:
        DataError: unreadable or inconsistent files, an empty image, unknown label values.
    """
    vol = load_case(case)
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
    if prep.zscore:
        img = zscore(img, mask)
    else:
        img = np.where(mask, img, 0).astype(np.float32)
    channels = list(vol.modalities)
    axis = None
    if sym.enabled:
        import torch

        from brats_lightning.data.symmetry import estimate_axis, symmetry_maps

        ref = vol.modalities.index("t1") if "t1" in vol.modalities else 0
        dev = _symmetry_device(sym.device)
        x = torch.from_numpy(img).to(dev).permute(3, 0, 1, 2)
        m = torch.from_numpy(mask).to(dev).permute(2, 0, 1)
        ax = estimate_axis(x[:, ref], m)
        maps = symmetry_maps(
            x,
            m,
            ref_channel=ref,
            axis=ax,
            window=sym.window,
            kernel_size=sym.kernel_size,
            sigma=sym.sigma,
            scale=sym.scale,
            min_angle=sym.min_angle,
        )
        # Stored centred (map - 0.5): 0 = symmetric, like the zero background; see datasets.
        sym_maps = (maps - 0.5).permute(1, 2, 3, 0).cpu().numpy()
        img = np.concatenate([img, sym_maps], axis=0)
        channels += [f"sym_{m}" for m in vol.modalities]
        axis = {"angle": ax.angle, "center_h": ax.center_h, "center_w": ax.center_w}
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
        "sources": _sources(case),
    }
    return Preprocessed(vol, img, mask, label, box, meta)


def prepare_case(
    case: CaseFiles,
    folder: Path,
    convention: LabelConvention,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
) -> Path:
    """Preprocess one case and store it, cropped, in ``folder`` (written atomically).

    Raises:
        DataError: unreadable or inconsistent files, an empty image, unknown label values.
    """
    p = preprocess_case(case, convention, prep, sym)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(crop(p.image, p.box).transpose(3, 0, 1, 2)).astype(np.float16))
        np.save(tmp / "mask.npy", np.ascontiguousarray(crop(p.mask, p.box).transpose(2, 0, 1)))
        if p.label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(crop(p.label, p.box).transpose(2, 0, 1)))
        (tmp / "meta.json").write_text(json.dumps(p.meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_prepared(folder: str | Path, mmap: bool = True) -> PreparedCase:
    """Open a prepared case (arrays memory-mapped unless ``mmap=False``)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        mode = "r" if mmap else None
        image = np.load(folder / "image.npy", mmap_mode=mode)
        mask = np.load(folder / "mask.npy", mmap_mode=mode)
        label = np.load(folder / "label.npy", mmap_mode=mode) if (folder / "label.npy").is_file() else None
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise DataError(f"{folder}: cannot read the prepared case ({e}); delete the folder to rebuild it") from e
    return PreparedCase(meta["case_id"], folder, image, label, mask, meta)
