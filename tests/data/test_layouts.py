"""brats_lightning.data.layouts: case discovery in every layout, on synthetic and real folders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import PatternLayout, detect_layout, discover_cases
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig, preprocess_case
from brats_lightning.data.readers import MODALITIES, load_case
from brats_lightning.errors import DataError
from tests.helpers import shared, write_brats_case


def test_discovers_and_stacks_in_fixed_order(tmp_path: Path) -> None:
    for c in ("B_2", "A_1"):
        write_brats_case(tmp_path, c)
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A_1", "B_2"]
    assert list(cases[0].images) == list(MODALITIES)
    vol = load_case(cases[0])
    assert vol.image.shape == (4, 12, 10, 6) and vol.image.dtype == np.float32
    # channel order follows MODALITIES whatever the file order: t1c is the t1ce file, reoriented
    t1ce = np.asarray(nib.load(cases[0].images["t1c"]).dataobj)
    np.testing.assert_array_equal(vol.to_original(vol.image[MODALITIES.index("t1c")]), t1ce)


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
    write_brats_case(tmp_path, "A_1")
    write_brats_case(tmp_path, "B_1", skip=("t1ce",))
    with pytest.raises(DataError, match=r"B_1: missing t1c image \(expected B_1_t1ce\.nii\.gz\)"):
        discover_cases(tmp_path)


def test_subset_of_modalities(tmp_path: Path) -> None:
    write_brats_case(tmp_path, "A_1", skip=("t1", "t2"))
    vol = load_case(discover_cases(tmp_path, modalities=("flair", "t1c"))[0])
    assert vol.image.shape[0] == 2 and vol.modalities == ("flair", "t1c")


def test_brats2023_layout(tmp_path: Path) -> None:
    write_brats_case(tmp_path, "BraTS-GLI-00001-000", sep="-", suffixes=("t1n", "t1c", "t2w", "t2f"))
    assert detect_layout(tmp_path).name == "brats2023"
    case = discover_cases(tmp_path)[0]
    assert case.images["flair"].name.endswith("-t2f.nii.gz") and case.images["t1"].name.endswith("-t1n.nii.gz")


def test_ambiguous_folder(tmp_path: Path) -> None:
    write_brats_case(tmp_path, "A_1")
    write_brats_case(tmp_path, "B-1", sep="-", suffixes=("t1n", "t1c", "t2w", "t2f"))
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


DEEPMEDIC_FILES = {
    "flair": "Flair_subtrMeanDivStd.nii.gz",
    "t1c": "T1c_subtrMeanDivStd.nii.gz",
    "label": "OTMultiClass.nii.gz",
    "mask": "brainmask.nii.gz",
}


def _write_vsd_case(root: Path, case: str, arrays: dict[str, np.ndarray], spacing=(1.0, 1.0, 1.0)) -> Path:
    """A BRATS 2013/2015 VSD folder: <case>/VSD.Brain.XX.O.<tag>.<id>/VSD.Brain.XX.O.<tag>.<id>.mha."""
    tags = {"flair": "MR_Flair", "t1": "MR_T1", "t1c": "MR_T1c", "t2": "MR_T2", "label": "OT"}
    for i, (key, arr) in enumerate(arrays.items()):
        prefix = "VSD.Brain_3more.XX.O" if key == "label" else "VSD.Brain.XX.O"
        name = f"{prefix}.{tags[key]}.{54512 + i}"
        d = root / case / name
        d.mkdir(parents=True)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # (x,y,z) -> sitk (z,y,x)
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(d / f"{name}.mha"))
    return root / case


def test_vsd_mha_layout_with_five_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shape = (20, 18, 12)
    seg = np.zeros(shape, np.int16)
    seg[5:12, 5:12, 3:8] = 2
    seg[7:10, 7:10, 4:7] = 3
    seg[8, 8, 5] = 4
    seg[6, 6, 4] = 1
    arrays = {m: rng.integers(1, 500, shape).astype(np.int16) for m in ("flair", "t1", "t1c", "t2")}
    for hg in ("HG", "LG"):  # cases may sit in sub-folders
        _write_vsd_case(tmp_path / hg, f"{hg}_0001", {**arrays, "label": seg}, spacing=(0.9, 0.9, 2.0))
    assert detect_layout(tmp_path).name == "brats2013"
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["HG_0001", "LG_0001"]
    vol = load_case(cases[0])
    assert vol.image.shape == (4, *shape)
    np.testing.assert_allclose(vol.spacing, (0.9, 0.9, 2.0))
    # ITK's LPS geometry becomes an LPS-oriented RAS affine; to_original gives back the file's array
    np.testing.assert_array_equal(vol.to_original(vol.label), seg)
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    internal = get_convention("brats2013").to_internal(vol.label)
    assert set(np.unique(internal).tolist()) == {0, 1, 2, 3, 4}


def test_vsd_missing_modality(tmp_path: Path) -> None:
    arr = np.ones((6, 6, 4), np.int16)
    _write_vsd_case(tmp_path, "0001", {"flair": arr, "t1": arr, "t2": arr})
    with pytest.raises(DataError, match="0001: missing t1c image"):
        discover_cases(tmp_path)


@pytest.mark.realdata
def test_real_deepmedic_cases_with_the_generic_layout() -> None:
    root = shared("brats2015_deepmedic")
    with pytest.raises(DataError, match="cannot detect the layout"):
        discover_cases(root)  # not a BraTS naming: the error says what it found
    cases = discover_cases(root, "generic", ("flair", "t1c"), DEEPMEDIC_FILES)
    assert len(cases) == 6 and all(c.mask is not None and c.label is not None for c in cases)
    vol = load_case(cases[0])
    assert vol.image.shape == (2, 240, 240, 155) and vol.mask is not None
    assert set(np.unique(vol.label).tolist()) == {0, 1, 2, 3, 4}
    # the images are z-scored with a non-zero background: the mask file defines the brain
    assert np.all(vol.image[0][~vol.mask] != 0)
    sym = SymmetryConfig(enabled=True, axis_modality="t1c")  # no T1 here: the axis is found on T1c
    pre = preprocess_case(cases[0], get_convention("brats2013"), PreprocessConfig(), sym)
    assert pre.image.shape == (4, 240, 240, 155)  # 2 images + 2 symmetry maps
    assert np.all(pre.image[:, ~pre.mask] == 0)
    np.testing.assert_allclose(pre.image[:2, pre.mask].mean(1), 0, atol=1e-3)


@pytest.mark.realdata
def test_deepmedic_case_is_the_same_patient_as_brats2018() -> None:
    """SOURCES.md: brats_2013_pat0006_1 == Brats18_2013_20_1 once label 3 is folded into 1."""
    dm = discover_cases(shared("brats2015_deepmedic"), PatternLayout(DEEPMEDIC_FILES), ("flair", "t1c"))
    a = load_case(next(c for c in dm if c.case_id == "brats_2013_pat0006_1")).label.astype(np.int64)
    b = load_case(discover_cases(shared("brats2018"))[1]).label
    a[a == 3] = 1
    np.testing.assert_array_equal(a, b)


@pytest.mark.realdata
def test_every_shared_folder_reads() -> None:
    assert len(discover_cases(shared("brats2018"))) == 14
    assert detect_layout(shared("brats2023_unlabeled")).name == "brats2023"
    preds = sorted(shared("predictions_deepbrainseg").glob("*.nii.gz"))
    assert len(preds) == 14 and nib.load(preds[0]).shape == (240, 240, 155)


def test_a_sequence_every_case_lacks_is_one_line_naming_the_option(tmp_path: Path, synthetic_root: Path) -> None:
    """Before: a line per case ("missing t2 image"), none saying that the data set has no T2 and which option trains
    without it."""
    from tests.helpers import copy_cases

    root = copy_cases(synthetic_root, tmp_path / "data", 3)
    for t2 in root.glob("*/*_t2.nii.gz"):
        t2.unlink()
    with pytest.raises(DataError) as e:
        discover_cases(root)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{root}: every case (3) lacks its t2 image (")
    assert message.endswith("add the files, or train without it: data.modalities=[flair,t1,t1c]")
