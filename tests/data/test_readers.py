"""brats_lightning.data.readers: image and label files into RAS arrays, bad files named."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_lightning.data.layouts import discover_cases
from brats_lightning.data.readers import load_case
from brats_lightning.errors import DataError
from tests.helpers import LPS, write_brats_case


def test_reorientation_to_ras_and_back(tmp_path: Path) -> None:
    """LPS files are flipped on X and Y to RAS; to_original undoes it exactly."""
    d = write_brats_case(tmp_path, "C_1")
    vol = load_case(discover_cases(tmp_path)[0])
    raw = np.asarray(nib.load(d / "C_1_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(vol.label, raw[::-1, ::-1, :])
    np.testing.assert_array_equal(vol.to_original(vol.label), raw)
    assert vol.shape == (12, 10, 6) and vol.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.affine, LPS)


def test_mismatched_shapes(tmp_path: Path) -> None:
    d = write_brats_case(tmp_path, "A_1")
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 7), np.int16), LPS), d / "A_1_t2.nii.gz")
    with pytest.raises(DataError, match=r"A_1_t2\.nii\.gz: shape \(12, 10, 7\) differs"):
        load_case(discover_cases(tmp_path)[0])


def test_mismatched_affines(tmp_path: Path) -> None:
    d = write_brats_case(tmp_path, "A_1")
    shifted = LPS.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 6), np.int16), shifted), d / "A_1_t1.nii.gz")
    with pytest.raises(DataError, match=r"A_1_t1\.nii\.gz: affine differs"):
        load_case(discover_cases(tmp_path)[0])


def test_corrupt_file(tmp_path: Path) -> None:
    d = write_brats_case(tmp_path, "A_1")
    data = (d / "A_1_flair.nii.gz").read_bytes()
    (d / "A_1_flair.nii.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    with pytest.raises(DataError, match=r"A_1_flair\.nii\.gz: cannot read image"):
        load_case(discover_cases(tmp_path)[0])
    (d / "A_1_flair.nii.gz").write_bytes(gzip.compress(b"definitely not nifti" * 20))
    with pytest.raises(DataError, match=r"A_1_flair\.nii\.gz: cannot read image"):
        load_case(discover_cases(tmp_path)[0])


def test_nan_voxels(tmp_path: Path) -> None:
    d = write_brats_case(tmp_path, "A_1")
    arr = np.ones((12, 10, 6), np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, LPS), d / "A_1_t2.nii.gz")
    with pytest.raises(DataError, match=r"A_1_t2\.nii\.gz: 1 NaN or infinite voxels"):
        load_case(discover_cases(tmp_path)[0])
