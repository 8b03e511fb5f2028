"""Case discovery and readers: real files, orientation round trip, and every kind of bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_lightning.data.layouts import detect_layout, discover_cases
from brats_lightning.data.readers import MODALITIES, load_case
from brats_lightning.errors import DataError
from tests.helpers import shared

LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _write_case(
    root: Path,
    case: str,
    shape=(12, 10, 6),
    affine=LPS,
    skip: tuple[str, ...] = (),
    label: bool = True,
    sep: str = "_",
    suffixes=("flair", "t1", "t1ce", "t2"),
) -> Path:
    d = root / case
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(case))
    for s in suffixes:
        if s in skip:
            continue
        nib.save(
            nib.Nifti1Image(rng.integers(0, 500, shape).astype(np.int16), affine),
            d / f"{case}{sep}{s}.nii.gz",
        )
    if label:
        seg = np.zeros(shape, np.uint8)
        seg[3:6, 3:6, 2:4] = 2
        seg[4, 4, 3] = 4
        nib.save(nib.Nifti1Image(seg, affine), d / f"{case}{sep}seg.nii.gz")
    return d


def test_discovers_and_stacks_in_fixed_order(tmp_path: Path) -> None:
    for c in ("B_2", "A_1"):
        _write_case(tmp_path, c)
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A_1", "B_2"]
    assert list(cases[0].images) == list(MODALITIES)
    vol = load_case(cases[0])
    assert vol.image.shape == (4, 12, 10, 6) and vol.image.dtype == np.float32
    # channel order follows MODALITIES whatever the file order: t1c is the t1ce file, reoriented
    t1ce = np.asarray(nib.load(cases[0].images["t1c"]).dataobj)
    np.testing.assert_array_equal(vol.to_original(vol.image[MODALITIES.index("t1c")]), t1ce)


def test_reorientation_to_ras_and_back(tmp_path: Path) -> None:
    """LPS files are flipped on X and Y to RAS; to_original undoes it exactly."""
    d = _write_case(tmp_path, "C_1")
    vol = load_case(discover_cases(tmp_path)[0])
    raw = np.asarray(nib.load(d / "C_1_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(vol.label, raw[::-1, ::-1, :])
    np.testing.assert_array_equal(vol.to_original(vol.label), raw)
    assert vol.shape == (12, 10, 6) and vol.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.affine, LPS)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover_cases(tmp_path / "nope")


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"no case folders in {tmp_path}"):
        discover_cases(tmp_path)


def test_unknown_layout_says_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "case1").mkdir()
    (tmp_path / "case1" / "image.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"cannot detect the layout.*image\.png.*expected"):
        discover_cases(tmp_path)


def test_case_missing_a_modality_names_the_file(tmp_path: Path) -> None:
    _write_case(tmp_path, "A_1")
    _write_case(tmp_path, "B_1", skip=("t1ce",))
    with pytest.raises(DataError, match=r"B_1: missing t1c image \(expected B_1_t1ce\.nii\.gz\)"):
        discover_cases(tmp_path)


def test_subset_of_modalities(tmp_path: Path) -> None:
    _write_case(tmp_path, "A_1", skip=("t1", "t2"))
    vol = load_case(discover_cases(tmp_path, modalities=("flair", "t1c"))[0])
    assert vol.image.shape[0] == 2 and vol.modalities == ("flair", "t1c")


def test_mismatched_shapes(tmp_path: Path) -> None:
    d = _write_case(tmp_path, "A_1")
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 7), np.int16), LPS), d / "A_1_t2.nii.gz")
    with pytest.raises(DataError, match=r"A_1_t2\.nii\.gz: shape \(12, 10, 7\) differs"):
        load_case(discover_cases(tmp_path)[0])


def test_mismatched_affines(tmp_path: Path) -> None:
    d = _write_case(tmp_path, "A_1")
    shifted = LPS.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 6), np.int16), shifted), d / "A_1_t1.nii.gz")
    with pytest.raises(DataError, match=r"A_1_t1\.nii\.gz: affine differs"):
        load_case(discover_cases(tmp_path)[0])


def test_corrupt_file(tmp_path: Path) -> None:
    d = _write_case(tmp_path, "A_1")
    data = (d / "A_1_flair.nii.gz").read_bytes()
    (d / "A_1_flair.nii.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    with pytest.raises(DataError, match=r"A_1_flair\.nii\.gz: cannot read image"):
        load_case(discover_cases(tmp_path)[0])
    (d / "A_1_flair.nii.gz").write_bytes(gzip.compress(b"definitely not nifti" * 20))
    with pytest.raises(DataError, match=r"A_1_flair\.nii\.gz: cannot read image"):
        load_case(discover_cases(tmp_path)[0])


def test_nan_voxels(tmp_path: Path) -> None:
    d = _write_case(tmp_path, "A_1")
    arr = np.ones((12, 10, 6), np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, LPS), d / "A_1_t2.nii.gz")
    with pytest.raises(DataError, match=r"A_1_t2\.nii\.gz: 1 NaN or infinite voxels"):
        load_case(discover_cases(tmp_path)[0])


def test_brats2023_layout(tmp_path: Path) -> None:
    _write_case(tmp_path, "BraTS-GLI-00001-000", sep="-", suffixes=("t1n", "t1c", "t2w", "t2f"))
    assert detect_layout(tmp_path).name == "brats2023"
    case = discover_cases(tmp_path)[0]
    assert case.images["flair"].name.endswith("-t2f.nii.gz") and case.images["t1"].name.endswith("-t1n.nii.gz")


def test_ambiguous_folder(tmp_path: Path) -> None:
    _write_case(tmp_path, "A_1")
    _write_case(tmp_path, "B-1", sep="-", suffixes=("t1n", "t1c", "t2w", "t2f"))
    with pytest.raises(DataError, match="ambiguous"):
        discover_cases(tmp_path)


@pytest.mark.realdata
def test_real_brats2018_cases() -> None:
    root = shared("brats2018")
    cases = discover_cases(root)
    assert len(cases) == 14 and all(c.label is not None for c in cases)
    vol = load_case(cases[0])
    assert vol.image.shape == (4, 240, 240, 155)
    assert set(np.unique(vol.label).tolist()) <= {0, 1, 2, 4}
    raw = nib.load(cases[0].label)
    np.testing.assert_array_equal(vol.to_original(vol.label), np.asarray(raw.dataobj))
    np.testing.assert_allclose(vol.affine, raw.affine)


@pytest.mark.realdata
def test_real_brats2023_case() -> None:
    cases = discover_cases(shared("brats2023_unlabeled"))
    assert len(cases) == 1 and cases[0].label is None and cases[0].layout == "brats2023"
    vol = load_case(cases[0])
    assert vol.image.shape[0] == 4 and vol.label is None
