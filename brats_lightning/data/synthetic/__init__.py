"""The synthetic BraTS-like data set on disk: phantom cases (:mod:`.phantom`) written as NIfTI files.

Cases are written in the BraTS layout ``<out>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, each
atomically, so that the framework runs with no real data.

Examples:
    >>> from brats_lightning.data.synthetic import write_dataset
    >>> folders = write_dataset("data/synthetic", n_cases=4, progress=False)  # doctest: +SKIP

Command line (:mod:`brats_lightning.data.synthetic.__main__`):
``python -m brats_lightning.data.synthetic OUT_DIR --n-cases 24 --montage m.png`` (the montage:
:func:`brats_lightning.viz.save_montage` of :func:`read_cases`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from brats_lightning.data.synthetic.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    MODALITIES,
    brats_affine,
    case_id,
    case_seed,
    generate_case,
)

__all__ = ["FILE_KEYS", "case_complete", "read_case", "read_cases", "write_case", "write_dataset"]

FILE_KEYS: tuple[str, ...] = (*MODALITIES, "seg")
"""All per-case files: ``<case>_<key>.nii.gz``."""


def _file(folder: Path, key: str) -> Path:
    """The file of ``key`` in a case folder."""
    return folder / f"{folder.name}_{key}.nii.gz"


def case_complete(folder: Path) -> bool:
    """Whether all five files of a case are present and non-empty."""
    return all(_file(folder, k).is_file() and _file(folder, k).stat().st_size > 0 for k in FILE_KEYS)


def read_case(folder: Path) -> dict[str, np.ndarray]:
    """Arrays of the five files of a case folder, in their stored dtypes."""
    return {k: np.asanyarray(cast(nib.Nifti1Image, nib.load(str(_file(folder, k)))).dataobj) for k in FILE_KEYS}


def read_cases(root: str | Path, n: int = 4) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The first ``n`` complete cases of a data set folder, as ``(name, arrays)`` (e.g. for a montage).

    Raises:
        FileNotFoundError: ``root`` holds no complete case folder.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and case_complete(p))
    if not folders:
        raise FileNotFoundError(f"no complete case folder in {root}")
    return [(f.name, read_case(f)) for f in folders[: int(n)]]


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write one NIfTI file with BraTS-like header fields."""
    img = nib.Nifti1Image(arr, affine)
    img.set_data_dtype(arr.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def write_case(case: dict[str, np.ndarray], folder: str | Path, spacing: float = DEFAULT_SPACING) -> Path:
    """Write a case atomically: into a temporary sibling folder, then renamed into place.

    Args:
        case: output of :func:`~brats_lightning.data.synthetic.phantom.generate_case`.
        folder: case folder; its name is the case id.
        spacing: voxel size in mm.

    Returns:
        The case folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(case["seg"].shape, spacing)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        for key in FILE_KEYS:
            _save(case[key], affine, tmp / f"{folder.name}_{key}.nii.gz")
        if folder.exists() and not case_complete(folder):
            shutil.rmtree(folder)  # a stale, incomplete case folder
        try:
            os.replace(tmp, folder)
        except OSError:
            if not case_complete(folder):  # someone else wrote it meanwhile: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_dataset(
    out_dir: str | Path,
    n_cases: int = 24,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write ``n_cases`` synthetic cases in the BraTS layout, skipping the complete ones.

    Case ``i`` is ``Synth_<i:04d>``, generated from
    :func:`~brats_lightning.data.synthetic.phantom.case_seed` ``(seed, i)``. Each case is written atomically,
    so an interrupted run never leaves a half-written case folder.

    Args:
        out_dir: data-set folder (created if needed).
        n_cases: number of cases.
        shape: array shape of every volume.
        spacing: voxel size in mm written in the affine.
        seed: data-set seed.
        progress: show a ``rich`` progress bar.

    Returns:
        The case folders, in order.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = [out / case_id(i) for i in range(int(n_cases))]
    columns = (
        TextColumn("[bold]synthetic BraTS"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    todo = sum(not case_complete(f) for f in folders)
    with Progress(*columns, disable=not progress or todo == 0, transient=False) as bar:
        task = bar.add_task("cases", total=len(folders))
        for i, folder in enumerate(folders):
            if not case_complete(folder):
                write_case(generate_case(case_seed(seed, i), shape), folder, spacing)
            bar.advance(task)
    return folders
