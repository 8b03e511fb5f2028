"""brats_lightning.evaluation.results: summaries against numpy, and a registered metric reaching every output."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_lightning.data.labels import REGIONS
from brats_lightning.evaluation import metrics as M
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.evaluation.results import markdown_table, run_metrics, summarise


def _rows(rng: np.random.Generator, cases: int) -> list[dict]:
    rows = []
    for c in range(cases):
        for r in REGIONS:
            rows.append({"case": f"c{c}", "region": r, "dice": float(rng.random()), "hd95": float(rng.random() * 9)})
    return rows


def test_summary_and_run_metrics_against_numpy() -> None:
    rows = _rows(np.random.default_rng(3), 5)
    rows[4]["hd95"] = float("nan")  # an undefined value (e.g. a lesion-wise score of two empty masks)
    summary = summarise(rows, method="toy")
    assert summary["n_cases"] == 5 and summary["method"] == "toy"
    for r in REGIONS:
        dice = np.array([row["dice"] for row in rows if row["region"] == r])
        st = summary["metrics"][r]["dice"]
        assert st["mean"] == pytest.approx(dice.mean()) and st["median"] == pytest.approx(np.median(dice))
        assert st["std"] == pytest.approx(dice.std()) and st["n"] == 5
    tc_hd = [row["hd95"] for row in rows if row["region"] == "tc"]
    assert summary["metrics"]["tc"]["hd95"]["n"] == 4
    assert summary["metrics"]["tc"]["hd95"]["mean"] == pytest.approx(np.nanmean(tc_hd))
    flat = run_metrics(summary)
    assert flat["test/dice_mean"] == pytest.approx(np.mean([flat[f"test/dice_{r}"] for r in REGIONS]))
    assert list(summary["metrics"]["wt"]) == ["dice", "hd95"]  # registry order, not the rows' order
    md = markdown_table(summary, "toy")
    assert f"| toy | {summary['metrics']['wt']['dice']['mean']:.2f} |" in md
    assert "| HD95 (mm) |" in md  # the registry's title


@pytest.fixture
def toy_metric() -> Iterator[str]:
    """The CONTRIBUTING recipe's toy metric, registered for one test and removed afterwards."""

    @M.register_metric(M.Metric("pred_ml", "Predicted volume (ml)", failure=0.0, decimals=1))
    def pred_ml(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> float:
        return float(pred.sum() * np.prod(spacing) / 1000.0)

    yield "pred_ml"
    M.unregister_metric("pred_ml")
    assert "pred_ml" not in M.metric_names(lesion_wise=True)


def test_registered_metric_reaches_evaluate_outputs(tmp_path: Path, toy_metric: str) -> None:
    """One function and one registration: the metric is in per_case.csv, summary.json and summary.md."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm^3 voxels
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[2:8, 2:8, 2:8] = 2
    gt[3:6, 3:6, 3:6] = 4
    pred = gt.copy()
    pred[8:10, 2:8, 2:8] = 2  # 72 more edema voxels
    nib.save(nib.Nifti1Image(gt, affine), gt_dir / "case1.nii.gz")
    nib.save(nib.Nifti1Image(pred, affine), pred_dir / "case1.nii.gz")
    with pytest.raises(ValueError, match="registered twice"):
        M.register_metric(M.Metric(toy_metric, "again", failure=0.0))(lambda p, g, s: 0.0)
    summary = evaluate_dirs(pred_dir, gt_dir, tmp_path / "out", hd95=False, lesion_wise=False)
    expected_wt = (6**3 + 72) * 2.0 / 1000.0
    assert summary["metrics"]["wt"][toy_metric]["mean"] == pytest.approx(expected_wt)
    assert summary["metrics"]["et"][toy_metric]["mean"] == pytest.approx(27 * 2.0 / 1000.0)
    rows = list(csv.DictReader((tmp_path / "out" / "per_case.csv").open()))
    columns = ["case", "region", "dice", "sensitivity", "specificity", "ppv", "volume_diff_ml", toy_metric]
    assert list(rows[0]) == columns
    assert float(rows[0]["volume_diff_ml"]) == pytest.approx(72 * 2.0 / 1000.0)  # WT over-segmented by 72 voxels
    assert float(rows[0][toy_metric]) == pytest.approx(expected_wt)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]["wt"][toy_metric]["n"] == 1
    assert "| Predicted volume (ml) | 0.6 ± 0.0 |" in (tmp_path / "out" / "summary.md").read_text()
    # a missing prediction scores the registered failure value
    nib.save(nib.Nifti1Image(gt, affine), gt_dir / "case2.nii.gz")
    summary = evaluate_dirs(pred_dir, gt_dir, tmp_path / "out2", hd95=False, lesion_wise=False)
    assert summary["missing"] == ["case2"]
    assert summary["metrics"]["wt"][toy_metric]["median"] == pytest.approx(expected_wt / 2)
    # the volume difference of a missing prediction is unknown: left out, not counted as 0
    assert summary["metrics"]["wt"]["volume_diff_ml"]["n"] == 1
