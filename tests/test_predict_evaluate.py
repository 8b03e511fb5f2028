"""Prediction to NIfTI in the input's grid, and BraTS-region evaluation (synthetic and real data)."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import DataError
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.load.predictor import load_model
from brats_lightning.predict import predict_dir
from tests.helpers import shared


def _cfg(**kw) -> dict:
    base = {
        "layout": "auto",
        "files": None,
        "output_convention": "auto",
        "probabilities": False,
        "postprocess": False,
        "postprocess_options": {"min_volume_mm3": 10, "min_slices": 2},
        "overwrite": False,
        "device": "cpu",
        "batch_size": 8,
    }
    return OmegaConf.create({**base, **kw})


def test_checkpoint_carries_the_data_configuration(trained_ckpt: Path) -> None:
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    assert state["module_class"] == "brats_lightning.modules.fcn.FCNModule"
    assert state["data_config"]["symmetry"]["enabled"] is True
    assert state["data_config"]["modalities"] == ["flair", "t1", "t1c", "t2"]
    model, dc = load_model(trained_ckpt)
    assert dc["convention"] == "brats2017" and not model.training


def test_predict_writes_labels_in_the_input_grid(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    src = synthetic_root
    out = tmp_path / "pred"
    report = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(src), output_dir=str(out), probabilities=True))
    cases = discover_cases(src)
    assert sorted(report["done"]) == sorted(c.case_id for c in cases) and not report["failed"]
    for c in cases[:3]:
        ref = nib.load(c.images["flair"])
        pred = nib.load(out / f"{c.case_id}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(ref.affine)
        labels = np.asarray(pred.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        probs = nib.load(out / "probabilities" / f"{c.case_id}.nii.gz").get_fdata()
        assert probs.shape == (*ref.shape, 4)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
        # the label map is the argmax of the probabilities, in file labels
        np.testing.assert_array_equal(np.array([0, 1, 2, 4])[probs.argmax(-1)], labels)
        # nothing outside the brain
        brain = np.asarray(ref.dataobj) != 0
        assert not labels[~brain].any()
    assert json.loads((out / "predict_report.json").read_text())["done"]
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_predict_skips_existing_and_reports_unreadable_cases(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    src = synthetic_root
    inp = tmp_path / "in"
    inp.mkdir()
    cases = discover_cases(src)
    for c in cases[:3]:
        (inp / c.case_id).symlink_to(Path(c.images["flair"]).parent)
    # a fourth case with a corrupt FLAIR
    bad = inp / "Synth_bad"
    bad.mkdir()
    for f in Path(cases[3].images["flair"]).parent.iterdir():
        (bad / f.name.replace(cases[3].case_id, "Synth_bad")).write_bytes(f.read_bytes())
    data = (bad / "Synth_bad_flair.nii.gz").read_bytes()
    (bad / "Synth_bad_flair.nii.gz").write_bytes(data[: len(data) // 3])
    out = tmp_path / "pred"
    first = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert len(first["done"]) == 3 and list(first["failed"]) == ["Synth_bad"]
    assert "Synth_bad_flair.nii.gz: cannot read image" in first["failed"]["Synth_bad"]
    assert not (out / "Synth_bad.nii.gz").exists()
    stamp = os.stat(out / f"{cases[0].case_id}.nii.gz").st_mtime_ns
    again = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert len(again["skipped"]) == 3 and not again["done"]
    assert os.stat(out / f"{cases[0].case_id}.nii.gz").st_mtime_ns == stamp
    forced = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), overwrite=True))
    assert len(forced["done"]) == 3


def test_interrupted_write_leaves_no_file(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path, monkeypatch
) -> None:
    src = synthetic_root
    inp = tmp_path / "in"
    inp.mkdir()
    case = discover_cases(src)[0]
    (inp / case.case_id).symlink_to(Path(case.images["flair"]).parent)
    real_save = nib.save

    def broken_save(img, filename):
        real_save(img, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    out = tmp_path / "pred"
    report = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert "disk full" in report["failed"][case.case_id]
    assert [p.name for p in out.iterdir()] == ["predict_report.json"]


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


# ---------------------------------------------------------------------------------------- real data


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
    summary = evaluate_dirs(pred_root, gt_root, tmp_path)
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


@pytest.mark.realdata
def test_predict_round_trip_on_real_cases(tmp_path: Path, trained_ckpt: Path) -> None:
    """A real BraTS 2018 and a BraTS 2023 case come back in their own grid and label convention."""
    inp18, inp23 = tmp_path / "in18", tmp_path / "in23"
    inp18.mkdir()
    inp23.mkdir()
    case18 = shared("brats2018") / "Brats18_CBICA_ABM_1"
    (inp18 / case18.name).symlink_to(case18)
    case23 = shared("brats2023_unlabeled") / "BraTS-GLI-00001-000"
    (inp23 / case23.name).symlink_to(case23)
    for inp, case, ref_name, allowed in (
        (inp18, case18, f"{case18.name}_flair.nii.gz", {0, 1, 2, 4}),
        (inp23, case23, f"{case23.name}-t2f.nii.gz", {0, 1, 2, 3}),
    ):
        out = tmp_path / f"out_{inp.name}"
        report = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
        assert report["done"] == [case.name], report
        ref = nib.load(case / ref_name)
        pred = nib.load(out / f"{case.name}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= allowed


def test_predict_reports_inconsistent_cases_and_does_the_rest(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    src = synthetic_root
    cases = discover_cases(src)
    inp = tmp_path / "in"
    for k, c in enumerate(cases[:3]):
        d = inp / c.case_id
        d.mkdir(parents=True)
        for f in Path(c.images["flair"]).parent.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        t2 = d / f"{c.case_id}_t2.nii.gz"
        img = nib.load(t2)
        if k == 1:  # NaN voxels
            arr = np.asarray(img.dataobj).astype(np.float32)
            arr[3, 3, 3] = np.nan
            nib.save(nib.Nifti1Image(arr, img.affine), t2)
        elif k == 2:  # a modality with a different shape
            nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), img.affine), t2)
    out = tmp_path / "out"
    report = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert report["done"] == [cases[0].case_id]
    assert "NaN or infinite voxels" in report["failed"][cases[1].case_id]
    assert "shape (10, 10, 10) differs" in report["failed"][cases[2].case_id]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{cases[0].case_id}.nii.gz", "predict_report.json"])


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
