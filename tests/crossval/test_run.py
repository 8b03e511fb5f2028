"""brats_lightning.crossval: experiment=real_fast end to end: out-of-fold figures, the clean-up chosen nested,
the ensemble predictor, resume in place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_lightning.data.labels import REGIONS, get_convention


def _oof_fold(run: Path, case: str) -> int:
    with np.load(run / "oof" / f"{case}.npz") as z:
        return int(z["fold"])


def test_real_fast_is_a_cross_validation_with_out_of_fold_figures_and_an_ensemble_predictor(
    tmp_path: Path, synthetic_root: Path, cache_dir: Path
) -> None:
    import csv
    import shutil

    import nibabel as nib

    from brats_lightning import predict
    from brats_lightning.data.layouts import discover_cases
    from brats_lightning.evaluation.metrics import dice
    from brats_lightning.files import read_checkpoint
    from brats_lightning.load.runs import find_checkpoints
    from brats_lightning.training.train import main as train_main
    from tests.helpers import run_main

    run = tmp_path / "run"
    args = [
        "experiment=real_fast",
        f"data.root={synthetic_root}",
        f"paths.cache_dir={cache_dir}",
        "data.crop_size=[48,56]",
        "data.batch_size=4",
        "data.num_folds=2",
        "data.test_fraction=0.25",
        "model.width=0.25",
        "budget_minutes=0.5",
        "reserve_minutes=0.1",
        "cv.min_fold_minutes=0.05",
        "cv.tta_flips=[lr]",
        "cv.min_volumes_mm3=[100]",
        "cv.et_volumes_mm3=[100]",
        "cv.raw_weights=true",
        "callbacks.ema={_target_:pytorch_lightning.callbacks.EMAWeightAveraging,decay:0.99}",
        "cv.uncertainty=true",
        "cv.missing_modalities=[t1]",
        "logger=none",
        f"hydra.run.dir={run}",
    ]
    run_main(train_main, *args)
    metrics = json.loads((run / "metrics.json").read_text())
    folds_csv = {r["case"]: r for r in csv.DictReader((run / "cv" / "folds.csv").open())}
    rows = list(csv.DictReader((run / "cv" / "per_case.csv").open()))
    cases = sorted(folds_csv)
    # every case of the cross-validation once, scored out of fold by the model of its own fold
    assert sorted({r["case"] for r in rows}) == cases and len(rows) == 3 * len(cases) == 3 * 6
    for case, row in folds_csv.items():
        assert _oof_fold(run, case) == int(row["fold"])
        fold_model = read_checkpoint(run / f"fold_{row['fold']}" / "checkpoints" / "last.ckpt")
        assert fold_model["data_config"]["modalities"]  # a real fold model
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert summary["evaluation"].startswith("cross-validation") and summary["folds"] == 2
    # the figures: means of the per-case rows, under cv/ (not test/); Dice recomputed from the saved segmentations
    for region in REGIONS:
        assert metrics[f"cv/dice_{region}"] == pytest.approx(
            np.mean([float(r["dice"]) for r in rows if r["region"] == region]), abs=1e-5
        )
        assert f"cv/lesion_dice_{region}" in metrics and f"cv/hd95_{region}" in metrics
    conv = get_convention("brats2017")
    case = cases[0]
    with np.load(run / "oof" / f"{case}.npz") as z:
        single = z["classes_single"]
    label = np.load(next((cache_dir / "prepared").glob(f"*/{case}/label.npy")))
    pm, gm = conv.region_masks(single), conv.region_masks(label)
    assert "cv_single/dice_mean" in metrics and "cv_raw/dice_mean" in metrics  # EMA: raw weights beside
    assert "cv_missing_t1/dice_mean" in metrics  # and without T1
    assert 0.0 <= metrics["cv/uncertainty_voxel_auroc"] <= 1.0 and -1 <= metrics["cv/uncertainty_case_spearman"] <= 1
    unc_rows = list(csv.DictReader((run / "cv" / "uncertainty.csv").open()))
    assert sorted(r["case"] for r in unc_rows) == cases
    assert np.isfinite([dice(pm[r], gm[r]) for r in REGIONS]).all()
    # the clean-up: chosen per fold without the fold's cases, and the final choice in every fold model
    cleanup = json.loads((run / "cv" / "cleanup.json").read_text())
    assert set(cleanup["nested"]) == {"0", "1"} and cleanup["cases"] == len(cases)
    for k in range(2):
        model = read_checkpoint(run / f"fold_{k}" / "checkpoints" / "last.ckpt")
        assert model["postprocess"] == cleanup["final"] and model["tta_flips"] == ["lr"]
    # the held-out cases chose nothing: the ensemble's test, under test/
    assert {"test/dice_wt", "test/dice_mean"} <= set(metrics) and (run / "test" / "per_case.csv").is_file()
    test_cases = {r["case"] for r in csv.DictReader((run / "test" / "per_case.csv").open())}
    assert test_cases and not test_cases & set(cases)
    # within the budget: 0.5 minutes after data preparation (each fold its share, at least 3 s)
    assert metrics["time/cv_s"] < 0.5 * 60 + 20
    # predict ckpt_path=<run>: the ensemble of the fold models, with the final clean-up and flips
    assert find_checkpoints(run) == [run / f"fold_{k}" / "checkpoints" / "last.ckpt" for k in range(2)]
    case_files = next(c for c in discover_cases(synthetic_root) if c.case_id in test_cases)
    inp = tmp_path / "in"
    shutil.copytree(Path(case_files.images["flair"]).parent, inp / case_files.case_id)
    run_main(predict.main, f"ckpt_path={run}", f"input_dir={inp}", f"output_dir={tmp_path / 'p'}",
             f"hydra.run.dir={tmp_path / 'pr'}")  # fmt: skip
    report = json.loads((tmp_path / "p" / "predict_report.json").read_text())
    assert report["done"] == [case_files.case_id]
    assert nib.load(tmp_path / "p" / f"{case_files.case_id}.nii.gz").shape == nib.load(case_files.label).shape
    # resumed in place: a run killed during its last fold keeps the finished folds and finishes the last
    state = json.loads((run / "cv_state.json").read_text())
    state["folds"]["1"]["done"] = False
    (run / "cv_state.json").write_text(json.dumps(state))
    for c in [c for c, r in folds_csv.items() if r["fold"] == "1"]:
        (run / "oof" / f"{c}.npz").unlink()
    (run / "metrics.json").unlink()
    fold0 = read_checkpoint(run / "fold_0" / "checkpoints" / "last.ckpt")["state_dict"]
    run_main(train_main, *args)
    again = json.loads((run / "metrics.json").read_text())
    for key, value in read_checkpoint(run / "fold_0" / "checkpoints" / "last.ckpt")["state_dict"].items():
        assert torch.equal(value, fold0[key]), key  # fold 0 was not trained again
    assert again["cv/fold1/steps"] == metrics["cv/fold1/steps"]  # fold 1 resumed at its end: no step more
    assert all((run / "oof" / f"{c}.npz").is_file() for c in cases)
