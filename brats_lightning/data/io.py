"""Case discovery and readers for BraTS data sets.

A *layout* knows how one BraTS edition names its files. Every reader returns a :class:`Volume`
whose arrays are reoriented to RAS voxel order (axis 0 left->right, 1 posterior->anterior,
2 inferior->superior; axial slices are ``image[:, :, :, z]``), so that left-right mirroring is
always a flip of axis 0. The original affine, header and orientation are kept so that a
prediction can be written back in the input's exact grid (:meth:`Volume.to_original`).

Modalities are keyed by canonical name, stacked in a fixed order (:data:`MODALITIES`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

__all__ = [
    "MODALITIES",
    "DataError",
    "CaseFiles",
    "Volume",
    "LAYOUTS",
    "discover_cases",
    "detect_layout",
    "load_case",
    "read_image",
]

#: Canonical modality names in the order channels are stacked (Shen et al. Fig. 1 order).
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1c", "t2")

_NIFTI_EXT = (".nii.gz", ".nii")


class DataError(ValueError):
    """A data folder or file is missing, unreadable or inconsistent; the message names the path."""


@dataclass
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: case identifier (usually the folder name).
        images: canonical modality name -> image file.
        label: segmentation file, or ``None`` for unlabelled cases.
        layout: name of the layout that found the case.
        mask: optional brain-mask file (layouts whose images have no zero background).
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    layout: str
    mask: Path | None = None


@dataclass
class Volume:
    """A loaded case in RAS voxel order.

    Attributes:
        case_id: case identifier.
        image: ``(C, X, Y, Z)`` float32 array, channels in ``modalities`` order.
        label: ``(X, Y, Z)`` array of *file* label values, or ``None``.
        modalities: channel names.
        affine: the original 4x4 affine of the input files.
        shape: the original spatial shape (voxel order of the files).
        ornt: nibabel orientation transform from the file's voxel axes to RAS.
        spacing: voxel size in mm along the RAS axes.
        mask: optional ``(X, Y, Z)`` boolean brain mask read from a file.
        header: header of the first image (reused when writing predictions).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    modalities: tuple[str, ...]
    affine: np.ndarray
    shape: tuple[int, ...]
    ornt: np.ndarray
    spacing: tuple[float, ...]
    mask: np.ndarray | None = None
    header: nib.Nifti1Header | None = field(default=None, repr=False)

    def to_original(self, arr: np.ndarray) -> np.ndarray:
        """Bring a RAS-ordered spatial array (trailing 3 axes) back to the files' voxel order."""
        return _apply_ornt(arr, nio.ornt_transform(nio.axcodes2ornt("RAS"), self.ornt))


def _apply_ornt(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply an orientation transform to the trailing three axes of ``arr``."""
    lead = arr.ndim - 3
    if lead == 0:
        return np.ascontiguousarray(nio.apply_orientation(arr, ornt))
    moved = np.moveaxis(arr, tuple(range(lead)), tuple(range(-lead, 0)))  # spatial axes first
    out = nio.apply_orientation(moved, ornt)
    return np.ascontiguousarray(np.moveaxis(out, tuple(range(-lead, 0)), tuple(range(lead))))


def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]:
    """Read one image file fully into memory.

    Args:
        path: a NIfTI file (``.nii`` / ``.nii.gz``).

    Returns:
        ``(data, affine, header)`` with ``data`` in the file's voxel order.

    Raises:
        DataError: the file is missing, corrupt or truncated, or not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D image, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64), getattr(img, "header", None)


# --------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class Layout:
    """File naming of one BraTS edition: ``<case>/<case><sep><suffix>.nii.gz``.

    Attributes:
        name: layout key.
        sep: separator between case id and suffix (``_`` or ``-``).
        suffixes: canonical modality -> file suffix.
        label_suffix: suffix of the segmentation.
        convention: the edition's label convention (see :mod:`brats_lightning.data.labels`).
    """

    name: str
    sep: str
    suffixes: dict[str, str]
    label_suffix: str
    convention: str

    def file(self, case_dir: Path, suffix: str) -> Path | None:
        for ext in _NIFTI_EXT:
            p = case_dir / f"{case_dir.name}{self.sep}{suffix}{ext}"
            if p.is_file():
                return p
        return None

    def matches(self, case_dir: Path) -> bool:
        """Whether ``case_dir`` holds at least one file named in this layout."""
        return any(self.file(case_dir, s) is not None for s in (*self.suffixes.values(), self.label_suffix))

    def case(self, case_dir: Path, modalities: Sequence[str]) -> CaseFiles:
        images = {}
        for m in modalities:
            if m not in self.suffixes:
                raise DataError(f"{case_dir}: the {self.name} layout has no modality {m!r} (has {list(self.suffixes)})")
            p = self.file(case_dir, self.suffixes[m])
            if p is None:
                raise DataError(
                    f"{case_dir}: missing {m} image (expected {case_dir.name}{self.sep}{self.suffixes[m]}.nii.gz)"
                )
            images[m] = p
        return CaseFiles(case_dir.name, images, self.file(case_dir, self.label_suffix), self.name)


LAYOUTS: dict[str, Layout] = {
    "brats2018": Layout(
        "brats2018", "_", {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2"}, "seg", "brats2017"
    ),
    "brats2023": Layout("brats2023", "-", {"flair": "t2f", "t1": "t1n", "t1c": "t1c", "t2": "t2w"}, "seg", "brats2023"),
}


def _case_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: str | Path) -> Layout:
    """Detect the layout of a data root from its case folders.

    Raises:
        DataError: the folder is empty, matches no layout, or matches several.
    """
    root = Path(root)
    dirs = _case_dirs(root)
    if not dirs:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise DataError(
            f"no case folders in {root} (found {found or 'nothing'}); expected one folder per case, "
            f"e.g. <case>/<case>_flair.nii.gz (BraTS 2018-2021) or <case>/<case>-t2f.nii.gz (BraTS 2023)"
        )
    hits = {name: sum(layout.matches(d) for d in dirs) for name, layout in LAYOUTS.items()}
    matched = [n for n, h in hits.items() if h]
    if len(matched) == 1:
        return LAYOUTS[matched[0]]
    if not matched:
        example = sorted(f.name for f in dirs[0].iterdir())[:8]
        raise DataError(
            f"cannot detect the layout of {root}: no folder matches a known layout {sorted(LAYOUTS)}. "
            f"First case folder {dirs[0].name} holds {example}; expected e.g. "
            f"{dirs[0].name}_flair.nii.gz (brats2018) or {dirs[0].name}-t2f.nii.gz (brats2023)"
        )
    raise DataError(f"{root} is ambiguous: folders match layouts {matched} ({hits}); set data.layout explicitly")


def discover_cases(root: str | Path, layout: str = "auto", modalities: Sequence[str] = MODALITIES) -> list[CaseFiles]:
    """Find every case under ``root``.

    Args:
        root: folder holding one sub-folder per case.
        layout: a key of :data:`LAYOUTS` or ``"auto"`` to detect it.
        modalities: canonical modalities every case must have.

    Returns:
        The cases sorted by id.

    Raises:
        DataError: missing or empty root, unknown layout, a case missing a modality.
    """
    root = Path(root)
    lay = detect_layout(root) if layout == "auto" else LAYOUTS.get(layout)
    if lay is None:
        raise DataError(f"unknown layout {layout!r}; expected 'auto' or one of {sorted(LAYOUTS)}")
    cases = [lay.case(d, modalities) for d in _case_dirs(root) if lay.matches(d)]
    if not cases:
        raise DataError(f"no {lay.name} cases found in {root}")
    return cases


def load_case(case: CaseFiles, atol: float = 1e-3) -> Volume:
    """Load a case's images (stacked in ``case.images`` order) and label, reoriented to RAS.

    Args:
        case: the case's files.
        atol: tolerance when comparing the affines of the files.

    Raises:
        DataError: unreadable files, mismatched shapes or affines, NaN or infinite voxels.
    """
    arrays, ref_affine, ref_shape, header, ref_file = [], None, None, None, None
    for modality, path in case.images.items():
        data, affine, hdr = read_image(path)
        if ref_shape is None:
            ref_affine, ref_shape, header, ref_file = affine, data.shape, hdr, path
        else:
            _check_same_grid(path, data.shape, affine, ref_file, ref_shape, ref_affine, atol)
        data = np.asarray(data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise DataError(f"{path}: {n} NaN or infinite voxels in the {modality} image")
        arrays.append(data)
    assert ref_affine is not None and ref_shape is not None
    ornt = nio.io_orientation(ref_affine)
    to_ras = nio.ornt_transform(ornt, nio.axcodes2ornt("RAS"))
    image = _apply_ornt(np.stack(arrays), to_ras)
    label = None
    if case.label is not None:
        data, affine, _ = read_image(case.label)
        _check_same_grid(case.label, data.shape, affine, ref_file, ref_shape, ref_affine, atol)
        if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            raise DataError(f"{case.label}: NaN or infinite values in the label volume")
        label = _apply_ornt(np.asarray(data), to_ras)
    mask = None
    if case.mask is not None:
        data, affine, _ = read_image(case.mask)
        _check_same_grid(case.mask, data.shape, affine, ref_file, ref_shape, ref_affine, atol)
        mask = _apply_ornt(np.asarray(data) > 0, to_ras)
    zooms = np.sqrt((ref_affine[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(zooms[int(ax)]) for ax in ornt_ras_axes(ornt))
    return Volume(
        case_id=case.case_id,
        image=image,
        label=label,
        modalities=tuple(case.images),
        affine=ref_affine,
        shape=tuple(int(s) for s in ref_shape),
        ornt=ornt,
        spacing=spacing,
        mask=mask,
        header=header,
    )


def ornt_ras_axes(ornt: np.ndarray) -> list[int]:
    """For each RAS axis, the index of the file voxel axis that maps onto it."""
    axes = [0, 0, 0]
    for file_axis, (ras_axis, _) in enumerate(ornt):
        axes[int(ras_axis)] = file_axis
    return axes


def _check_same_grid(path, shape, affine, ref_path, ref_shape, ref_affine, atol) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(f"{path}: shape {tuple(shape)} differs from {Path(ref_path).name} {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=atol):
        raise DataError(
            f"{path}: affine differs from {Path(ref_path).name}:\n{np.round(affine, 4)}\nvs\n{np.round(ref_affine, 4)}"
        )
