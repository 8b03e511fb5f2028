"""brats_lightning.crossval: experiment=real_fast end to end: out-of-fold figures, the clean-up chosen nested,
the ensemble predictor, resume in place.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_lightning import predict
from brats_lightning.config import compose
from brats_lightning.crossval.card import cleanup_words
from brats_lightning.crossval.run import _fold_config, check_fold_callbacks, run_cross_validation
from brats_lightning.data.cache import load_prepared
from brats_lightning.data.datasets import SliceDataset
from brats_lightning.data.labels import REGIONS, get_convention
from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import ConfigError
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.evaluation.metrics import dice
from brats_lightning.files import read_checkpoint
from brats_lightning.load.checkpoint import load_module
from brats_lightning.load.runs import find_checkpoints
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.run_files import MetricsFile, SummaryFile, read_run_file
from brats_lightning.training.train import main as train_main
from brats_lightning.training.train import train
from tests.helpers import run_main


def _oof_fold(run: Path, case: str) -> int:
    with np.load(run / "oof" / f"{case}.npz") as z:
        return int(z["fold"])


def test_real_fast_is_a_cross_validation_with_out_of_fold_figures_and_a_final_predictor(
    tmp_path: Path, synthetic_root: Path, cache_dir: Path
) -> None:
    import csv
    import shutil

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
        "cv.probabilities=true",
        "cv.et_thresholds=[0.3]",
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
    # what the run wrote is what the schemas of its files accept (a cleanup with its ET threshold included)
    assert read_run_file(run / "cv" / "summary.json", SummaryFile, "summary").folds == 2
    assert read_run_file(run / "metrics.json", MetricsFile, "metrics").root == metrics
    assert read_run_file(run / "test" / "summary.json", SummaryFile, "summary").n_cases >= 1
    # the figures: means of the per-case rows, under cv/ (not test/); Dice recomputed from the saved segmentations
    for region in REGIONS:
        assert metrics[f"cv/dice_{region}"] == pytest.approx(
            np.mean([float(r["dice"]) for r in rows if r["region"] == region]), abs=1e-5
        )
        assert f"cv/lesion_dice_{region}" in metrics and f"cv/hd95_{region}" in metrics
        # each with its 95% interval (a bootstrap over cases stratified by site), holding the mean
        low, high = metrics[f"cv/dice_{region}_ci95_low"], metrics[f"cv/dice_{region}_ci95_high"]
        assert low <= metrics[f"cv/dice_{region}"] <= high and low < high
        site = folds_csv[cases[0]]["site"]
        assert f"cv/site/{site}/dice_{region}" in metrics
    assert "| ET |" in (run / "cv" / "intervals.md").read_text()
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
    # the enhancing tumour's threshold chosen first (from the saved probabilities), then the clean-up's stages
    assert [r["option"]["et_threshold"] for r in cleanup["et_threshold"]] == [None, 0.3]
    assert {"et_threshold", "components", "tc", "et", "et_rule"} <= set(cleanup)
    assert cleanup["et_threshold"][0]["dice_et"] == pytest.approx(metrics["cv_flips/dice_et"], abs=1e-6)
    # lesion-wise figures beside Dice for every clean-up compared; "none" is the flipped segmentations' Dice
    none = cleanup["components"][0]
    assert none["option"]["largest_only"] is False and 0 <= none["lesion_dice_et"] <= 1
    for region in REGIONS:
        assert none[f"dice_{region}"] == pytest.approx(metrics[f"cv_flips/dice_{region}"], abs=1e-6)
    # the shipped predictor (cv.final=all): one model of the recipe trained on every case, with the final choices
    final = read_checkpoint(run / "final" / "checkpoints" / "last.ckpt")
    chosen = dict(cleanup["final"])
    assert final["et_threshold"] == chosen.pop("et_threshold")
    assert final["postprocess"] == chosen and final["tta_flips"] == ["lr"]
    assert metrics["final/steps"] > 0 and json.loads((run / "predictor.json").read_text())["final"] == "all"
    # the held-out cases chose nothing: the shipped predictor's test, under test/
    assert {"test/dice_wt", "test/dice_mean"} <= set(metrics) and (run / "test" / "per_case.csv").is_file()
    test_cases = {r["case"] for r in csv.DictReader((run / "test" / "per_case.csv").open())}
    assert test_cases and not test_cases & set(cases)
    # the model card: the run's own cases, sites, figures with intervals, choices and versions
    card = (run / "MODEL_CARD.md").read_text()
    sites = {r["site"] for r in folds_csv.values()}
    assert f"{len(cases)} labelled cases from `{synthetic_root}`" in card
    assert all(f"{c} ({folds_csv[c]['site']})" in card for c in cases) and not any(c in card for c in test_cases)
    assert f"in {len(sites)} site(s)" in card and "stratified by site" in card and "leave-one-site-out" in card
    assert (run / "cv" / "intervals.md").read_text().strip() in card
    assert f"ET {metrics['test/dice_et']:.3f} [" in card  # the held-out test, with its interval
    assert f"clean-up: {cleanup_words(final['postprocess'])};" in card and f"torch {torch.__version__}" in card
    assert f"fold 1: {int(metrics['cv/fold1/steps']):,} steps" in card
    # the input as the run prepared it: real_fast standardises histograms, it does not z-score
    assert "standardises each sequence's histogram inside the brain" in card and "z-scores" not in card
    # the recipe's net (the U-Net decoder since it gained under leave-one-site-out), named in words
    assert "the net `unet` (Shen et al.'s encoder with a U-Net decoder and skip connections) at width 0.25" in card
    # within the budget: 0.5 minutes after data preparation (each fold its share, at least 3 s)
    assert metrics["time/cv_s"] < 0.5 * 60 + 20
    # predict ckpt_path=<run>: the model trained on every case, with the final clean-up and flips
    assert find_checkpoints(run) == [run / "final" / "checkpoints" / "last.ckpt"]
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
    # the out-of-fold segmentations, written in the cases' own grid and labels: evaluate on them and the original
    # label files gives the cross-validation's per-case figures, every column
    scored = tmp_path / "evaluated"
    evaluate_dirs(run / "cv" / "segmentations", synthetic_root, scored)
    ours = {(r["case"], r["region"]): r for r in csv.DictReader((run / "cv" / "per_case.csv").open())}
    theirs = {(r["case"], r["region"]): r for r in csv.DictReader((scored / "per_case.csv").open())}
    assert len(ours) == 3 * len(cases) and set(ours) <= set(theirs)
    assert {c for c, _ in set(theirs) - set(ours)} == test_cases  # (the held-out cases have no out-of-fold one)
    for key, row in ours.items():
        for column, value in row.items():
            if column not in ("case", "region"):
                assert float(theirs[key][column]) == pytest.approx(float(value), abs=1e-4), (key, column)
    # a rerun in the same folder with another split (three folds) is refused, before anything trains
    with pytest.raises(ConfigError, match=r"cv_state.json: this folder's cross-validation was trained with another "
                       r"split of the cases; resuming it in place would keep folds trained otherwise"):  # fmt: skip
        three = [a for a in args if not a.startswith(("hydra.", "data.num_folds"))] + ["data.num_folds=3"]
        train_main_cfg = compose(three, output_dir=str(run))
        run_cross_validation(train_main_cfg, train)
    # and one with other training options names them
    with pytest.raises(ConfigError, match=r"trained with other training options \(model.lr\)"):
        other = compose([a for a in args if not a.startswith("hydra.")] + ["model.lr=0.01"], output_dir=str(run))
        run_cross_validation(other, train)


def test_a_fold_validates_on_nothing_and_callbacks_that_choose_on_validation_are_refused(tmp_path: Path) -> None:
    """A fold's validation cases are its out-of-fold test: the fold config validates on none of them, and an
    early stop, a tuning or a best-epoch checkpoint (which choose on them) are refused before anything runs."""
    cfg = compose(["experiment=real_fast", "data.root=x"], output_dir=str(tmp_path))
    fold = _fold_config(cfg, 1, tmp_path / "fold_1", 60.0, None)
    assert fold.trainer.limit_val_batches == 0 and fold.trainer.num_sanity_val_steps == 0
    assert fold.data.fold == 1 and fold.test is False and fold.trainer.max_time == {"seconds": 60.0}
    check_fold_callbacks(cfg)  # real_fast's own callbacks choose nothing
    for overrides, name in (
        (["callbacks=early_stopping", "callbacks.model_checkpoint=null"], "early_stopping"),
        (["callbacks=default"], "model_checkpoint"),
        (["callbacks=tuned"], "model_checkpoint"),
    ):
        bad = compose(["experiment=real_fast", "data.root=x", *overrides], output_dir=str(tmp_path))
        with pytest.raises(ConfigError, match=rf"^callbacks\.{name}: \w+ chooses on validation cases"):
            check_fold_callbacks(bad)


class MemoriseModule(FCNModule):
    """A model that memorises its training cases: it segments a case it trained on perfectly (its stored label)
    and any other case as background. Out of fold it can only score perfectly if a fold trained on its cases."""

    memory: dict[str, torch.Tensor]

    def on_fit_start(self) -> None:
        self.memory = {
            c.case_id: torch.from_numpy(np.asarray(c.label)).long() for c in self.trainer.datamodule.train_cases
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["memory"] = dict(getattr(self, "memory", {}))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.memory = dict(checkpoint.get("memory", {}))

    def predict_case(self, batch: dict, flips=()) -> torch.Tensor:  # type: ignore[no-untyped-def]
        label = getattr(self, "memory", {}).get(batch["case_id"])
        z, _, x, y = batch["image"].shape
        if label is None:
            label = torch.zeros((z, x, y), dtype=torch.long)
        return torch.nn.functional.one_hot(label, self.convention.num_classes).permute(0, 3, 1, 2).float()


def _tiny_real_fast(synthetic_root: Path, cache_dir: Path) -> list[str]:
    """experiment=real_fast on the tiny synthetic data: 3 folds, quarter width, no loader workers."""
    return [
        "experiment=real_fast",
        f"data.root={synthetic_root}",
        f"paths.cache_dir={cache_dir}",
        "data.crop_size=[48,56]",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.num_folds=3",
        "model.width=0.25",
    ]


def test_fold_models_never_see_the_cases_they_score(
    tmp_path: Path, synthetic_root: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cases each fold trains on, as its data loader served them, are disjoint from the cases it scores; and a
    model that memorises its training cases (perfect on them) scores nothing out of fold."""
    served: list[set[str]] = []
    fill = SliceDataset.fill

    def recording_fill(self: SliceDataset, items, arrays):  # type: ignore[no-untyped-def]
        served[-1].update(self.cases[self.index[i][0]].case_id for _, i in items)
        return fill(self, items, arrays)

    start_fit = MemoriseModule.on_fit_start

    def new_fold(self: MemoriseModule) -> None:
        served.append(set())
        start_fit(self)

    monkeypatch.setattr(SliceDataset, "fill", recording_fill)
    monkeypatch.setattr(MemoriseModule, "on_fit_start", new_fold)
    run = tmp_path / "run"
    run_main(
        train_main,
        *_tiny_real_fast(synthetic_root, cache_dir),
        f"model._target_={MemoriseModule.__module__}.MemoriseModule",
        "cv.fold_minutes=0.05",
        "cv.tta_flips=[]",
        "logger=none",
        f"hydra.run.dir={run}",
    )
    folds = {}
    for row in csv.DictReader((run / "cv" / "folds.csv").open()):
        folds.setdefault(int(row["fold"]), set()).add(row["case"])
    assert len(served) == len(folds) + 1 == 4  # a model per fold, then the final one (cv.final=all)
    for k, scored in folds.items():
        assert served[k] and not served[k] & scored, k  # trained on other cases only
        assert served[k] | scored == set().union(*folds.values())  # and on every other case
    assert served[3] == set().union(*folds.values())  # the shipped model: trained on every case
    rows = list(csv.DictReader((run / "cv" / "per_case.csv").open()))
    assert all(float(r["dice"]) == 0.0 for r in rows if r["region"] == "wt")  # nothing out of fold
    # the memoriser works: its fold checkpoint segments one of its own training cases perfectly
    model, _ = load_module(run / "fold_0" / "checkpoints" / "last.ckpt")
    own = sorted(served[0])[0]
    case = load_prepared(next((cache_dir / "prepared").glob(f"*/{own}")))
    probs = model.predict_case({"case_id": own, "image": torch.from_numpy(np.asarray(case.image, np.float32))})
    assert torch.equal(model.decide(probs), torch.from_numpy(np.asarray(case.label)).long())


@pytest.mark.slow  # (12 s: a second cross-validation; the default suite keeps the shipped model trained on all cases)
def test_the_fold_models_ensemble_is_shipped_when_asked(tmp_path: Path, synthetic_root: Path, cache_dir: Path) -> None:
    run = tmp_path / "run"
    run_main(
        train_main,
        *_tiny_real_fast(synthetic_root, cache_dir),
        "cv.final=ensemble",
        "cv.fold_minutes=0.03",
        "cv.tta_flips=[]",
        "logger=none",
        f"hydra.run.dir={run}",
    )
    doc = json.loads((run / "predictor.json").read_text())
    assert doc["final"] == "ensemble" and "ensemble of the 3 fold models" in doc["what"]
    assert find_checkpoints(run) == [run / f"fold_{k}" / "checkpoints" / "last.ckpt" for k in range(3)]
    assert not (run / "final").exists()
