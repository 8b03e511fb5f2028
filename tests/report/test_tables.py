"""brats_lightning.report.tables: the report's tables and figures of a multirun."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from brats_lightning import report
from brats_lightning.data.labels import REGIONS
from brats_lightning.report import write_report
from tests.helpers import job_model, run_argv


def test_report_main_tables_every_setting_of_the_multirun(
    multirun: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared multirun's fold-0 jobs (a copy: the shared one is read-only): one fold per setting."""
    copy = tmp_path / "multirun"
    for job in (j for j in multirun.iterdir() if (j / ".hydra").is_dir()):
        if "data.fold=0" in (job / ".hydra" / "overrides.yaml").read_text():
            shutil.copytree(job, copy / job.name, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    multirun = copy
    report.main([str(multirun)])
    out = multirun / "report"
    assert {"results.md", "results.csv", "runs.csv", "val_dice.png", "overlays.png"} <= {p.name for p in out.iterdir()}
    md = (out / "results.md").read_text()
    assert md in capsys.readouterr().out  # the command prints the table it wrote
    # runs.csv: one row per job, its setting and its own test metrics
    jobs = {p.name: p for p in multirun.iterdir() if (p / ".hydra").is_dir()}
    runs = {r["folder"]: r for r in csv.DictReader((out / "runs.csv").open())}
    assert set(runs) == set(jobs)
    settings = {}
    for folder, job in jobs.items():
        metrics = json.loads((job / "metrics.json").read_text())
        assert float(runs[folder]["test/dice_wt"]) == pytest.approx(metrics["test/dice_wt"], rel=1e-5)
        assert int(runs[folder]["fold"]) == 0
        assert ("symmetry" in runs[folder]["setting"]) is (job_model(job) == "fcn_sym")
        settings[runs[folder]["setting"]] = metrics
    # results.csv and results.md: a row per setting, its mean over its one fold (no fake 0.00 spread)
    rows = {r["setting"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == set(settings) and len(rows) == 2
    for setting, metrics in settings.items():
        assert int(rows[setting]["folds"]) == 1
        for region in REGIONS:
            assert float(rows[setting][f"dice_{region}_mean"]) == pytest.approx(
                metrics[f"test/dice_{region}"], rel=1e-5
            )
        assert f"| {setting} (ours) | {metrics['test/dice_wt']:.2f} | " in md
    assert "±" not in md.split("\n\n")[1]
    # the validation curves of both epochs, four panels in a row
    for job in jobs.values():  # a header and two epochs
        assert len((job / "val_curve.csv").read_text().strip().splitlines()) == 3
    from matplotlib.image import imread

    assert imread(out / "val_dice.png").shape[1] > 3 * imread(out / "val_dice.png").shape[0]


def test_report_averages_folds(tmp_path: Path) -> None:
    """Two settings x three folds written by hand: the table holds each setting's mean ± std over folds."""
    dice = {"fcn": [0.70, 0.80, 0.90], "fcn_sym": [0.75, 0.85, 0.80]}
    for i, (model, fold) in enumerate((m, f) for m in dice for f in range(3)):
        job = tmp_path / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- data.fold={fold}\n")
        metrics = {f"test/{m}_{r}": 0.5 for m in ("dice", "sensitivity", "specificity", "ppv") for r in REGIONS}
        metrics["test/dice_wt"] = dice[model][fold]
        (job / "metrics.json").write_text(json.dumps(metrics))
        # the method's name, as train() records it (model.name of conf/model/<model>.yaml)
        name = {"fcn": "FCN (3 blocks)", "fcn_sym": "FCN + symmetry (3 blocks)"}[model]
        (job / "summary.json").write_text(json.dumps({"n_cases": 3, "metrics": {}, "method": name}))
        (job / "val_curve.csv").write_text("epoch,val/dice_wt\n0,0.5\n1,0.6\n")
    paths = write_report(tmp_path, tmp_path / "out")
    rows = {r["setting"]: r for r in csv.DictReader(paths["results.csv"].open())}
    assert set(rows) == {"FCN (3 blocks)", "FCN + symmetry (3 blocks)"}
    for model, name in (("fcn", "FCN (3 blocks)"), ("fcn_sym", "FCN + symmetry (3 blocks)")):
        assert int(rows[name]["folds"]) == 3
        assert float(rows[name]["dice_wt_mean"]) == pytest.approx(sum(dice[model]) / 3)
        assert float(rows[name]["dice_wt_std"]) == pytest.approx(float(np.std(dice[model])))
    md = paths["results.md"].read_text()
    assert "| FCN (3 blocks) (ours) | 0.80 ± 0.08 |" in md and "over 3 folds" in md
    # Shen et al.'s layout (Dice, PPV, Sensitivity) with their published row beside ours
    assert "| Method | Dice Complete | Dice Core | Dice Enhancing | PPV Complete |" in md
    assert "| FCN + symmetry (3 blocks) (Shen et al. 2017, BRATS 2013 test) | 0.87 | 0.82 | 0.75 | 0.85 |" in md


def test_havaei_tables_print_ppv_under_their_specificity_heading(tmp_path: Path) -> None:
    """Havaei et al.'s "Specificity" is PPV: ours is printed there, true specificity apart, the paper's row beside."""
    job = tmp_path / "0_job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- havaei=twopath_star\n")
    metrics = {f"test/{m}_{r}": 0.5 for m in ("dice", "sensitivity", "specificity", "ppv") for r in REGIONS}
    metrics |= {"test/ppv_wt": 0.61, "test/specificity_wt": 0.997, "test/sensitivity_wt": 0.73}
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "summary.json").write_text(json.dumps({"n_cases": 1, "metrics": {}, "method": "TwoPathCNN*"}))
    job2 = tmp_path / "1_job"
    (job2 / ".hydra").mkdir(parents=True)
    (job2 / ".hydra" / "overrides.yaml").write_text("- havaei=localpath\n")
    (job2 / "metrics.json").write_text(json.dumps(metrics))
    (job2 / "summary.json").write_text(json.dumps({"n_cases": 1, "metrics": {}, "method": "LocalPathCNN"}))
    md = write_report(tmp_path, tmp_path / "out")["results.md"].read_text()
    head = next(line for line in md.splitlines() if line.startswith("| Method"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert (
        cols[4] == "Specificity† Complete"
        and cols[7] == "Sensitivity Complete"
        and cols[10] == "True specificity Complete"
    )
    ours = next(line for line in md.splitlines() if line.startswith("| TwoPathCNN* (ours)"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert (cells[4], cells[7], cells[10]) == ("0.61", "0.73", "1.00")
    published = next(line for line in md.splitlines() if "TwoPathCNN* (Havaei et al. 2017" in line)
    assert [c.strip() for c in published.strip("|").split("|")][1:10] == [
        "0.85",
        "0.78",
        "0.73",
        "0.93",
        "0.80",
        "0.72",
        "0.80",
        "0.76",
        "0.75",
    ]
    assert "LocalPathCNN (Havaei et al. 2017, BRATS 2013 test) | 0.77 |" in md and "is PPV" in md


def test_report_cli_errors_on_an_empty_folder(tmp_path: Path) -> None:
    run = run_argv(report.main, str(tmp_path))
    assert run.code == 2 and "no finished job" in run.err
