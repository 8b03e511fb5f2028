"""Reading scans: image and label files into RAS-ordered arrays.

Every reader returns arrays reoriented to RAS voxel order (axis 0 left->right, 1 posterior->anterior,
2 inferior->superior; axial slices are ``image[:, :, :, z]``), so that left-right mirroring is always a flip
of axis 0. The original affine, header and orientation are kept so that a prediction can be written back in
the input's exact grid (:meth:`Volume.to_original`). NIfTI files are read with nibabel, MetaImage and NRRD
files with SimpleITK. Which files make a case is the business of :mod:`brats_lightning.data.layouts`.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from brats_lightning.errors import DataError

__all__ = [
    "MODALITIES",
    "MAX_VOXELS",
    "check_size",
    "IMAGE_EXTENSIONS",
    "CaseFiles",
    "Volume",
    "file_problem",
    "read_image",
    "read_label",
    "load_case",
    "ornt_ras_axes",
    "to_file_order",
]

#: Canonical modality names in the order channels are stacked (Shen et al. Fig. 1 order).
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1c", "t2")

#: file name endings of the images the readers take
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


@dataclass
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: case identifier (usually the folder name).
        images: canonical modality name -> image file.
        label: segmentation file, or ``None`` for unlabelled cases.
        layout: name of the layout that found the case.
        mask: optional brain-mask file (layouts whose images have no zero background).
        folder: the case folder.
        channels: modality -> channel of its file, when the modalities share one 4D file (the Medical
            Segmentation Decathlon's layout); ``None``: one 3D file per modality.
        convention: the label convention the layout declares (a ``dataset.json``), or ``None``.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    layout: str
    mask: Path | None = None
    folder: Path | None = None
    channels: dict[str, int] | None = None
    convention: str | None = None


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


def to_file_order(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A RAS-ordered array (trailing 3 axes) in the voxel order of a file with this ``affine``: the inverse of
    the readers' reorientation (:meth:`Volume.to_original` without the volume)."""
    return _apply_ornt(arr, nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.io_orientation(affine)))


def _apply_ornt(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply an orientation transform to the trailing three axes of ``arr``."""
    lead = arr.ndim - 3
    if lead == 0:
        return np.ascontiguousarray(nio.apply_orientation(arr, ornt))
    moved = np.moveaxis(arr, tuple(range(lead)), tuple(range(-lead, 0)))  # spatial axes first
    out = nio.apply_orientation(moved, ornt)
    return np.ascontiguousarray(np.moveaxis(out, tuple(range(-lead, 0)), tuple(range(lead))))


def read_image(path: str | Path, channels: bool = False) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]:
    """Read one image file fully into memory.

    NIfTI files are read with nibabel; MetaImage (``.mha``/``.mhd``) and NRRD files with SimpleITK,
    their LPS physical geometry turned into an equivalent RAS affine.

    Args:
        path: the image file.
        channels: a 4D NIfTI of several channels (the last axis) is expected, and returned whole.

    Returns:
        ``(data, affine, header)`` with ``data`` in the file's voxel order (``header`` is None for
        non-NIfTI files).

    Raises:
        DataError: the file is missing, corrupt or truncated, or not 3D (not 4D with ``channels``).
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(problem)
    if path.suffix.lower() in (".mha", ".mhd", ".nrrd", ".nhdr"):
        return _read_itk(path)
    errors = (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError)
    try:
        img = nib.load(str(path))
    except errors as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    if not isinstance(img, nib.spatialimages.SpatialImage):  # e.g. a GIFTI surface: no voxel grid
        raise DataError(f"{path}: not a volume image ({type(img).__name__})")
    check_size(path, tuple(int(n) for n in img.shape))  # from the header, before any voxel is read
    try:
        data = np.asarray(img.dataobj)
    except errors as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    if channels:
        if data.ndim != 4:
            raise DataError(f"{path}: expected a 4D image of several channels, got shape {data.shape}")
    elif data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 and not channels:
        raise DataError(f"{path}: expected a 3D image, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64), getattr(img, "header", None)


#: the most voxels (times channels) an image may have: 2^27, a 512^3 volume (a BraTS image has 240 x 240 x 155 = 8.9
#: million); a header claiming more (2100^3: 9.3 billion, 37 GB as float32) is refused before any voxel is read
MAX_VOXELS = 2**27


def check_size(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse an image whose header claims more than :data:`MAX_VOXELS` voxels (before reading it).

    Raises:
        DataError: naming the file, its claimed shape and the limit.
    """
    n = int(np.prod(np.asarray(shape, dtype=np.float64)))
    if n > MAX_VOXELS or any(d < 1 for d in shape):
        raise DataError(
            f"{path}: its header claims a {' x '.join(map(str, shape))} image ({n:,} voxels); brats_lightning reads "
            f"images of 1 to {MAX_VOXELS:,} voxels (MAX_VOXELS); not read"
        )


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a directory, a broken link), or ``None``."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"{path}: broken symbolic link (to {os.readlink(path)})"
    if path.is_dir():
        return f"{path}: is a directory, expected an image file"
    if path.exists():
        return f"{path}: is not a regular file"
    return f"{path}: file not found"


def read_label(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]:
    """Read a segmentation like :func:`read_image`, checking that every value is a finite integer.

    Raises:
        DataError: unreadable file, NaN or infinite values, non-integer values.
    """
    data, affine, header = read_image(path)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise DataError(f"{path}: {int(data.size - finite.sum())} NaN or infinite values in the label volume")
        if np.any(data != np.round(data)):
            raise DataError(f"{path}: non-integer values in the label volume (is this a probability map?)")
        data = data.astype(np.int16)
    return data, affine, header


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray, None]:
    import SimpleITK as sitk

    try:
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        info.ReadImageInformation()  # the header only
        check_size(path, tuple(int(n) for n in info.GetSize()) + (info.GetNumberOfComponents(),))
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise DataError(f"{path}: cannot read image ({str(e).strip().splitlines()[-1]})") from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a 3D scalar image, got {img.GetDimension()}D")
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, None


def load_case(case: CaseFiles, atol: float = 1e-3) -> Volume:
    """Load a case's images (stacked in ``case.images`` order) and label, reoriented to RAS.

    Args:
        case: the case's files.
        atol: tolerance when comparing the affines of the files.

    Raises:
        DataError: unreadable files, mismatched shapes or affines, NaN or infinite voxels.
    """
    image, ref_affine, ref_shape, header, ref_file, to_ras, ornt = None, None, None, None, None, None, None
    shared: dict[Path, tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]] = {}  # 4D files, read once
    for c, (modality, path) in enumerate(case.images.items()):
        channel = (case.channels or {}).get(modality)
        if channel is None:
            data, affine, hdr = read_image(path)
        else:
            if path not in shared:
                shared[path] = read_image(path, channels=True)
            full, affine, hdr = shared[path]
            if not 0 <= channel < full.shape[-1]:
                raise DataError(
                    f"{path}: has {full.shape[-1]} channels; the data set's dataset.json puts {modality} in channel "
                    f"{channel}"
                )
            data = full[..., channel]
        if ref_shape is None:
            ref_affine, ref_shape, header, ref_file = affine, data.shape, hdr, path
            ornt = nio.io_orientation(ref_affine)
            to_ras = nio.ornt_transform(ornt, nio.axcodes2ornt("RAS"))
        else:
            _check_same_grid(path, data.shape, affine, ref_file, ref_shape, ref_affine, atol)
        if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise DataError(f"{path}: {n} NaN or infinite voxels in the {modality} image")
        ras = nio.apply_orientation(data, to_ras)  # flips and transposes are views
        if image is None:
            image = np.empty((len(case.images), *ras.shape), dtype=np.float32)
        image[c] = ras  # one copy per channel: reorientation and conversion to float32 together
    assert image is not None and ref_affine is not None and ref_shape is not None and ornt is not None
    assert to_ras is not None
    label = None
    if case.label is not None:
        data, affine, _ = read_label(case.label)
        _check_same_grid(case.label, data.shape, affine, ref_file, ref_shape, ref_affine, atol)
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
