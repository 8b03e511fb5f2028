"""brats_lightning.evaluation.folders: a folder of predictions scored against its ground truth, bad files listed."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_lightning import evaluate
from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import DataError
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.run_files import SummaryFile, read_run_file
from tests.helpers import copy_case, run_command, shared


def test_evaluate_synthetic_predictions_and_missing_cases(tmp_path: Path, synthetic_root: Path) -> None:
    src = synthetic_root
    cases = discover_cases(src)
    pred = tmp_path / "pred"
    pred.mkdir()
    # perfect predictions written in the 2023 convention (3 = enhancing) for all but one case
    for c in cases[1:]:
        img = nib.load(c.label)
        seg = np.asarray(img.dataobj).copy()
        seg[seg == 4] = 3
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), img.affine), pred / f"{c.case_id}.nii.gz")
    summary = evaluate_dirs(pred, src, tmp_path / "eval")
    assert summary["missing"] == [cases[0].case_id]
    rows = list(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))
    assert len(rows) == 3 * len(cases)
    for r in rows:
        if r["case"] == cases[0].case_id:
            assert float(r["dice"]) == 0.0 and float(r["hd95"]) == pytest.approx(373.13, abs=0.01)
        else:
            assert float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0
    assert summary["conventions"][cases[1].case_id]["prediction"] == "brats2023"
    n = len(cases)
    assert summary["metrics"]["wt"]["dice"]["mean"] == pytest.approx((n - 1) / n)
    assert "| Method |" in (tmp_path / "eval" / "summary.md").read_text()


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Surface voxels found with shifted copies (a different method than the package's erosion)."""
    m = np.pad(mask, 1)
    inner = m.copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(m, shift, axis=axis)
    return np.argwhere((m & ~inner)[1:-1, 1:-1, 1:-1])


def _hd95_kdtree(p: np.ndarray, g: np.ndarray, spacing) -> float:
    from scipy.spatial import cKDTree

    sp, sg = _surface_points(p) * spacing, _surface_points(g) * spacing
    d1 = cKDTree(sg).query(sp)[0]
    d2 = cKDTree(sp).query(sg)[0]
    return float(np.percentile(np.concatenate([d1, d2]), 95))


@pytest.mark.realdata
def test_evaluate_deepbrainseg_against_brats2018(tmp_path: Path) -> None:
    from monai.metrics import compute_dice

    gt_root, pred_root = shared("brats2018"), shared("predictions_deepbrainseg")
    summary = evaluate_dirs(pred_root, gt_root, tmp_path, lesion_wise=False)  # (lesion-wise: test_lesions.py)
    assert summary["n_cases"] == 14 and not summary["missing"]
    conv = summary["conventions"]
    assert conv["Brats18_2013_11_1"]["prediction"] == "brats2017"  # uses 4
    assert conv["Brats18_TCIA01_201_1"]["prediction"] == "brats2023"  # uses 3 for enhancing
    rows = {(r["case"], r["region"]): r for r in csv.DictReader((tmp_path / "per_case.csv").open())}
    assert float(rows[("Brats18_2013_3_1", "wt")]["dice"]) == pytest.approx(0.15, abs=0.01)  # the broken one
    for case in ("Brats18_2013_11_1", "Brats18_TCIA01_201_1"):
        gt = np.asarray(nib.load(gt_root / case / f"{case}_seg.nii.gz").dataobj)
        pr = np.asarray(nib.load(pred_root / f"{case}.nii.gz").dataobj)
        et_label = 4 if conv[case]["prediction"] == "brats2017" else 3
        masks = {
            "wt": (pr > 0, gt > 0),
            "tc": (np.isin(pr, [1, et_label]), np.isin(gt, [1, 4])),
            "et": (pr == et_label, gt == 4),
        }
        for region, (p, g) in masks.items():
            monai = float(
                compute_dice(torch.from_numpy(p)[None, None], torch.from_numpy(g)[None, None], include_background=True)
            )
            assert float(rows[(case, region)]["dice"]) == pytest.approx(monai, abs=1e-5)
            assert float(rows[(case, region)]["hd95"]) == pytest.approx(_hd95_kdtree(p, g, (1.0, 1.0, 1.0)), abs=1e-4)
    md = (tmp_path / "summary.md").read_text()
    assert (
        "Dice Complete" in md
        and json.loads((tmp_path / "summary.json").read_text())["metrics"]["et"]["dice"]["n"] == 14
    )


def test_evaluate_reports_unknown_labels_and_other_grids(tmp_path: Path, synthetic_root: Path) -> None:
    src = synthetic_root
    cases = discover_cases(src)[:3]
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for c in cases:
        (gt / f"{c.case_id}.nii.gz").write_bytes(Path(c.label).read_bytes())
        (pred / f"{c.case_id}.nii.gz").write_bytes(Path(c.label).read_bytes())
    img = nib.load(cases[0].label)
    seg = np.asarray(img.dataobj).copy()
    seg[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(seg, img.affine), pred / f"{cases[0].case_id}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), img.affine), pred / f"{cases[1].case_id}.nii.gz")
    summary = evaluate_dirs(pred, gt, tmp_path / "e1")
    # both bad predictions are scored as failures and listed with their reasons; the third case is scored
    assert re.search(
        rf"{cases[0].case_id}\.nii\.gz: label values \[.*5\] fit no convention",
        summary["invalid"][cases[0].case_id],
    )
    assert "differs from the ground truth" in summary["invalid"][cases[1].case_id]
    rows = list(csv.DictReader((tmp_path / "e1" / "per_case.csv").open()))
    dice = {(r["case"], r["region"]): float(r["dice"]) for r in rows}
    assert dice[(cases[0].case_id, "wt")] == 0.0 and dice[(cases[2].case_id, "wt")] == 1.0
    with pytest.raises(DataError, match="does not exist"):
        evaluate_dirs(tmp_path / "nope", gt, tmp_path / "e3")


def test_evaluate_scores_the_good_cases_and_lists_the_bad_ones(tmp_path: Path, synthetic_root: Path) -> None:
    cases = discover_cases(synthetic_root)[:4]
    gt = tmp_path / "gt"
    for c in cases:
        copy_case(c, gt)
    pred = tmp_path / "pred"
    pred.mkdir()
    for c in cases:
        (pred / f"{c.case_id}.nii.gz").write_bytes(Path(c.label).read_bytes())
    corrupt = gt / cases[0].case_id / f"{cases[0].case_id}_seg.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    (gt / cases[1].case_id / f"{cases[1].case_id}_seg.nii.gz").unlink()  # no label file
    img = nib.load(cases[2].label)
    nan = np.asarray(img.dataobj).astype(np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, img.affine), pred / f"{cases[2].case_id}.nii.gz")
    summary = evaluate_dirs(pred, gt, tmp_path / "eval")
    assert f"{cases[0].case_id}_seg.nii.gz: cannot read image" in summary["not_scored"][cases[0].case_id]
    assert f"no label file (expected {cases[1].case_id}_seg.nii.gz)" in summary["not_scored"][cases[1].case_id]
    assert f"{cases[2].case_id}.nii.gz: 1 NaN or infinite values" in summary["invalid"][cases[2].case_id]
    rows = list(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))
    assert sorted({r["case"] for r in rows}) == [cases[2].case_id, cases[3].case_id]
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_cases"] == 2
    # what evaluate wrote is what the schema of summary.json accepts
    assert read_run_file(tmp_path / "eval" / "summary.json", SummaryFile, "summary").not_scored == summary["not_scored"]
    run = run_command(
        evaluate.main,
        f"pred_dir={pred}",
        f"gt_dir={gt}",
        f"out_dir={tmp_path / 'eval2'}",
        "hd95=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert run.code == 1, run.err[-2000:]
    assert "3 case(s) could not be scored" in run.err and "Traceback" not in run.err
    assert (tmp_path / "eval2" / "per_case.csv").is_file()
