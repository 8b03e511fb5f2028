"""brats_lightning.evaluation.lesions: lesion-wise figures against the official scorers' output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_lightning.data.labels import AmbiguousConventionError, resolve_convention
from brats_lightning.errors import DataError
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.evaluation.lesions import LESION_HD95_PENALTY, brats2023_lesion_metrics, panoptic_metrics


def _cube(shape, corner, side) -> np.ndarray:
    m = np.zeros(shape, bool)
    x, y, z = corner
    m[x : x + side, y : y + side, z : z + side] = True
    return m


SHAPE = (60, 60, 40)


def test_a_found_lesion_a_missed_one_and_a_spurious_blob() -> None:
    a, b = _cube(SHAPE, (5, 5, 5), 6), _cube(SHAPE, (40, 40, 20), 6)  # 216 voxels each, far apart
    blob = _cube(SHAPE, (5, 40, 30), 5)
    gt, pred = a | b, a | blob
    p = panoptic_metrics(pred, gt)
    assert (p["tp_lesions"], p["fp_lesions"], p["fn_lesions"]) == (1, 1, 1)
    assert p["rq"] == pytest.approx(1 / (1 + 0.5 + 0.5)) and p["sq_dice"] == 1.0 and p["pq_dice"] == pytest.approx(0.5)
    q = brats2023_lesion_metrics(pred, gt)
    # found lesion: Dice 1, HD95 0; missed lesion and spurious blob: Dice 0, HD95 374 each
    assert q["lesion_dice"] == pytest.approx(1 / 3)
    assert q["lesion_hd95"] == pytest.approx(2 * LESION_HD95_PENALTY / 3)


def test_nearby_lesions_merge_small_ones_are_not_scored_and_splits_differ() -> None:
    # two ground-truth pieces 2 voxels apart are one lesion after the 3-voxel dilation
    gt = _cube(SHAPE, (10, 10, 10), 6) | _cube(SHAPE, (18, 10, 10), 6)
    pred = gt.copy()
    q = brats2023_lesion_metrics(pred, gt)
    assert q == {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    p = panoptic_metrics(pred, gt)
    assert (p["tp_lesions"], p["fp_lesions"], p["fn_lesions"]) == (2, 0, 0)  # panoptic: two lesions
    # a lesion of 27 mm^3 (<= 50) is not scored, and the prediction touching it is no false positive
    small = _cube(SHAPE, (40, 40, 20), 3)
    q = brats2023_lesion_metrics(gt | small, gt | small)
    assert q == {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    q = brats2023_lesion_metrics(gt, gt | small)  # missed small lesion: not counted either
    assert q == {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    # ... unless the voxels are larger: 27 voxels of 2 mm^3 = 54 mm^3 > 50
    q = brats2023_lesion_metrics(gt, gt | small, spacing=(2.0, 1.0, 1.0))
    assert q["lesion_dice"] == pytest.approx(1 / 2)
    # one lesion predicted in two pieces: the 2023 score gives the lesion both pieces, panoptic matches one
    one = _cube(SHAPE, (10, 30, 10), 8)
    pieces = one.copy()
    pieces[14, :, :] = False
    assert panoptic_metrics(pieces, one)["fp_lesions"] == 1
    q = brats2023_lesion_metrics(pieces, one)
    assert q["lesion_dice"] == pytest.approx(2 * pieces.sum() / (pieces.sum() + one.sum()))


def test_empty_masks_follow_the_official_edge_cases() -> None:
    empty = np.zeros(SHAPE, bool)
    lesion = _cube(SHAPE, (5, 5, 5), 6)
    p = panoptic_metrics(empty, empty)
    assert np.isnan(p["rq"]) and np.isnan(p["sq_dice"]) and p["tp_lesions"] == 0
    assert brats2023_lesion_metrics(empty, empty) == {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    assert panoptic_metrics(empty, lesion)["rq"] == 0.0 and panoptic_metrics(lesion, empty)["pq_dice"] == 0.0
    assert brats2023_lesion_metrics(lesion, empty) == {"lesion_dice": 0.0, "lesion_hd95": LESION_HD95_PENALTY}
    assert brats2023_lesion_metrics(empty, lesion) == {"lesion_dice": 0.0, "lesion_hd95": LESION_HD95_PENALTY}


def test_bipartite_matching_maximises_total_dice() -> None:
    """One prediction overlapping two references is matched to the one it overlaps more."""
    g1, g2 = _cube(SHAPE, (10, 10, 10), 6), _cube(SHAPE, (10, 18, 10), 6)
    pred = np.zeros(SHAPE, bool)
    pred[10:16, 12:20, 10:16] = True  # covers 4/6 of g1's columns... and 2 of g2's
    p = panoptic_metrics(pred, g1 | g2)
    inter = (pred & g2).sum()
    assert (p["tp_lesions"], p["fn_lesions"]) == (1, 1)
    assert p["sq_dice"] == pytest.approx(max(2 * (pred & g1).sum(), 2 * inter) / (pred.sum() + g1.sum()))


def test_label_3_without_4_is_never_guessed() -> None:
    assert resolve_convention([0, 1, 2, 4], "f").name == "brats2017"
    assert resolve_convention([0, 1, 2, 3, 4], "f").name == "brats2013"
    with pytest.raises(AmbiguousConventionError, match=r"f: labels \[0, 1, 2, 3\] fit the conventions"):
        resolve_convention([0, 1, 2, 3], "f")
    assert resolve_convention([0, 1, 2, 3], "f", folder_has_3_and_4=True).name == "brats2013"
    assert resolve_convention([0, 1, 2, 3], "f", task="brats2017").name == "brats2023"
    assert resolve_convention([0, 1, 2, 3], "f", ["brats2017", "brats2023"]).name == "brats2023"


def _save(path: Path, arr: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.eye(4)), path)


def _rows(folder: Path) -> dict:
    return {(r["case"], r["region"]): r for r in csv.DictReader((folder / "per_case.csv").open())}


def test_a_2013_ground_truth_without_label_4_is_not_scored_as_enhancing(tmp_path: Path) -> None:
    shape = (30, 30, 20)
    nonenh = np.zeros(shape, np.uint8)
    nonenh[5:12, 5:12, 5:10] = 2
    nonenh[7:10, 7:10, 6:9] = 3  # non-enhancing core, no enhancing tumour: a 2013 label volume
    full = nonenh.copy()
    full[8:9, 8:9, 7:8] = 4  # another 2013 case with enhancing tumour: proves the folder is 2013
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    _save(gt / "A.nii.gz", nonenh)
    _save(pred / "A.nii.gz", nonenh)
    # alone, the file is ambiguous: it is not scored, and says why
    with pytest.raises(
        DataError, match=r"A\.nii\.gz: labels \[0, 2, 3\] fit the conventions \['brats2013', 'brats2023'\]"
    ):
        evaluate_dirs(pred, gt, tmp_path / "e1", lesion_wise=False)
    # the rest of the folder proves 2013: label 3 is core, not enhancing (ET empty in both: Dice 1)
    _save(gt / "B.nii.gz", full)
    _save(pred / "B.nii.gz", full)
    summary = evaluate_dirs(pred, gt, tmp_path / "e2", lesion_wise=False)
    assert summary["conventions"]["A"] == {"prediction": "brats2013", "ground_truth": "brats2013"}
    rows = _rows(tmp_path / "e2")
    assert float(rows[("A", "et")]["dice"]) == 1.0 and float(rows[("A", "tc")]["dice"]) == 1.0
    # given explicitly, the same (even without the proving file)
    _save(gt / "B.nii.gz", nonenh)
    summary = evaluate_dirs(pred, gt, tmp_path / "e4", "brats2013", "brats2013", lesion_wise=False)
    assert summary["conventions"]["A"]["ground_truth"] == "brats2013" and not summary["not_scored"]


def test_2017_and_2023_files_and_a_mixed_prediction_folder(tmp_path: Path) -> None:
    shape = (30, 30, 20)
    seg17 = np.zeros(shape, np.uint8)
    seg17[5:12, 5:12, 5:10] = 2
    seg17[7:10, 7:10, 6:9] = 4
    seg23 = np.where(seg17 == 4, 3, seg17)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    _save(gt / "A.nii.gz", seg17)
    _save(gt / "B.nii.gz", seg17)
    _save(pred / "A.nii.gz", seg17)  # a 2017 prediction
    _save(pred / "B.nii.gz", seg23)  # a 2023 prediction of the same case (a mixed folder)
    summary = evaluate_dirs(pred, gt, tmp_path / "e", lesion_wise=True)
    assert summary["conventions"]["A"]["prediction"] == "brats2017"
    assert summary["conventions"]["B"]["prediction"] == "brats2023"  # a 2017 ground truth's task
    rows = _rows(tmp_path / "e")
    for case in ("A", "B"):
        assert float(rows[(case, "et")]["dice"]) == 1.0 and float(rows[(case, "et")]["lesion_dice"]) == 1.0
        assert float(rows[(case, "wt")]["pq_dice"]) == 1.0
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["metrics"]["et"]["rq"]["mean"] == 1.0 and saved["metrics"]["wt"]["tp_lesions"]["n"] == 2


LESION_COLUMNS = ("tp_lesions", "fp_lesions", "fn_lesions", "rq", "sq_dice", "pq_dice", "lesion_dice", "lesion_hd95")


def _reference() -> dict:
    import json

    return json.loads((Path(__file__).parent / "official_lesion_reference.json").read_text())


def test_evaluate_equals_the_official_scorers_output(tmp_path: Path) -> None:
    """``evaluate`` against what brats-evaluation 0.0.10 (gli) and the BraTS 2023 lesion-wise code wrote for the
    cases of ``tests/evaluation/lesion_cases.py`` (merges, splits, a lesion under 50 mm^3, the 3-voxel dilation,
    empty regions): every lesion-wise column of every case and region (``scripts/make_lesion_reference.py``)."""
    import csv

    from brats_lightning.evaluation.folders import evaluate_dirs
    from tests.evaluation import lesion_cases

    ref = _reference()
    assert ref["brats-evaluation"] == "0.0.10"
    pred, gt = lesion_cases.write(tmp_path)
    evaluate_dirs(pred, gt, tmp_path / "out", "brats2023", "brats2023", hd95=False, lesion_wise=True)
    rows = {(r["case"], r["region"]): r for r in csv.DictReader((tmp_path / "out" / "per_case.csv").open())}
    assert {c for c, _ in rows} == set(ref["cases"]) == set(lesion_cases.cases())
    for case, regions in ref["cases"].items():
        for region, columns in regions.items():
            for col in LESION_COLUMNS:
                theirs, mine = columns[col], float(rows[(case, region)][col])
                if theirs is None:  # undefined (both masks empty): NaN in ours too, not averaged
                    assert np.isnan(mine), (case, region, col, mine)
                else:
                    # (per_case.csv keeps 6 significant digits)
                    assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6), (case, region, col, mine, theirs)


@pytest.mark.parametrize("change", [{"min_volume_mm3": 0.0}, {"dilation": 0}, {"dilation": 1}])
def test_the_reference_catches_a_lost_rule(change: dict) -> None:
    """Without the 50 mm^3 rule or the 3-voxel dilation, the BraTS 2023 scores leave the official ones."""
    from brats_lightning.data.labels import get_convention
    from tests.evaluation import lesion_cases

    ref = _reference()["cases"]
    conv = get_convention("brats2023")
    differ = []
    for case, (pred, gt) in lesion_cases.cases().items():
        pm, gm = conv.region_masks(conv.to_internal(pred)), conv.region_masks(conv.to_internal(gt))
        for region in ("wt", "tc", "et"):
            kept = brats2023_lesion_metrics(pm[region], gm[region])["lesion_dice"]
            changed = brats2023_lesion_metrics(pm[region], gm[region], **change)["lesion_dice"]
            assert kept == pytest.approx(ref[case][region]["lesion_dice"], abs=1e-6)
            differ += [(case, region)] if abs(changed - ref[case][region]["lesion_dice"]) > 1e-6 else []
    assert differ, change
