"""Paper experiments: every experiment config composes; DDP counts each case once; W&B multirun; report."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra

from brats_lightning import report
from brats_lightning.config import compose, config_dir
from brats_lightning.data.labels import REGIONS
from brats_lightning.report import write_report

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


def _run(args: list[str], env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_there_are_paper_experiments() -> None:
    assert {"shen_blocks", "shen_symmetry", "havaei_table1", "havaei_table2", "havaei_cascade"} <= set(EXPERIMENTS)


def _stage_configs(name: str, cfg, tmp_path: Path) -> list:
    """Each pipeline stage of ``cfg`` composed as the pipeline would (stage inputs as dummy checkpoints)."""
    return [
        compose(
            [f"experiment={name}", *stage.overrides, "pipeline=null"]
            + [f"{k}=/tmp/x.ckpt" for k in (stage.get("inputs") or {})],
            output_dir=str(tmp_path),
        )
        for stage in cfg.pipeline.stages
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(tmp_path: Path, name: str) -> None:
    cfg = compose([f"experiment={name}"], output_dir=str(tmp_path))
    assert cfg.task_name == name
    params = cfg.hydra.sweeper.params or {}
    # every swept value (and every pipeline stage) composes too
    for key, values in params.items():
        for value in str(values).split(","):
            sub = compose([f"experiment={name}", f"{key}={value}"], output_dir=str(tmp_path))
            if sub.pipeline:
                for stage_cfg in _stage_configs(name, sub, tmp_path):
                    assert stage_cfg.model.in_channels == stage_cfg.data.in_channels
            else:
                assert sub.model.in_channels == sub.data.in_channels
    if cfg.pipeline:
        for stage_cfg in _stage_configs(name, cfg, tmp_path):
            assert stage_cfg.model._target_
    GlobalHydra.instance().clear()


SMALL = ["debug=default", "model.width=0.25", "data.test_fraction=0.4"]


def test_ddp_counts_every_case_once(tmp_path: Path, cache_dir: Path) -> None:
    """Test metrics with 2 CPU processes (gloo) equal the single-process ones, each case once."""
    # one precision for both (the CPU default is bf16 where supported; the DDP run below forces 32)
    common = [*SMALL, f"paths.cache_dir={cache_dir}", "logger=none", "trainer.precision=32"]
    _run(["brats_lightning", *common, f"hydra.run.dir={tmp_path / 'train'}"])
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    test = [*common, "train=false", f"ckpt_path={ckpt}"]
    _run(["brats_lightning", *test, f"hydra.run.dir={tmp_path / 'single'}"])
    proc = _run(
        [
            "brats_lightning",
            *test,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ]
    )
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    single = list(csv.DictReader((tmp_path / "single" / "per_case.csv").open()))
    ddp = list(csv.DictReader((tmp_path / "ddp" / "per_case.csv").open()))
    assert len(single) == 9  # 3 test cases: the distributed sampler pads them to 4 over 2 ranks
    assert [(r["case"], r["region"]) for r in ddp] == [(r["case"], r["region"]) for r in single]
    for a, b in zip(single, ddp):
        for m in ("dice", "sensitivity", "specificity", "ppv"):
            assert float(a[m]) == pytest.approx(float(b[m]), abs=1e-6)
    ms, md = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("single", "ddp"))
    assert md["test/dice_mean"] == pytest.approx(ms["test/dice_mean"], abs=1e-6)


@pytest.fixture(scope="module")
def wandb_multirun(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A two-job offline W&B multirun (FCN without and with symmetry maps)."""
    sweep = tmp_path_factory.mktemp("multirun")
    _run(
        [
            "brats_lightning",
            "-m",
            "experiment=shen_symmetry",
            "data.fold=0",
            *SMALL,
            "trainer.max_epochs=2",
            f"paths.cache_dir={cache_dir}",
            "logger=wandb",
            f"hydra.sweep.dir={sweep}",
        ],
        env_extra={"WANDB_API_KEY": ""},
    )
    return sweep


def _job_model(job: Path) -> str:
    """The ``model=`` option of a multirun job (from Hydra's record of its overrides)."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("model="))


def test_wandb_offline_multirun_makes_one_run_per_job(wandb_multirun: Path) -> None:
    jobs = sorted(p for p in wandb_multirun.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert sorted(_job_model(j) for j in jobs) == ["fcn", "fcn_sym"]
    run_ids = set()
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, job
        assert list(runs[0].glob("run-*.wandb"))  # the run's data file, closed by wandb.finish()
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
        # the run logged this job's own per-case results, and one overlay per test case
        rows = list(csv.DictReader((job / "per_case.csv").open()))
        (table_file,) = runs[0].glob("files/media/table/test/per_case_*.table.json")
        table = json.loads(table_file.read_text())
        assert table["columns"][:2] == ["case", "region"] and "dice" in table["columns"]
        logged = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert [(r["case"], r["region"]) for r in logged] == [(r["case"], r["region"]) for r in rows]
        for a, b in zip(logged, rows):
            assert a["dice"] == pytest.approx(float(b["dice"]), rel=1e-5, abs=1e-6)
        overlays = list(runs[0].glob("files/media/images/test/overlays_*.png"))
        assert len(overlays) == len({r["case"] for r in rows})
        # the job trained the model its sweep value names: symmetry maps double the input channels
        state = torch.load(job / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
        assert state["hyper_parameters"]["in_channels"] == {"fcn": 4, "fcn_sym": 8}[_job_model(job)]
    assert len(run_ids) == 2


def test_report_main_tables_every_setting_of_the_multirun(
    wandb_multirun: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    multirun = tmp_path / "multirun"  # a copy: the module's multirun is shared, read-only
    shutil.copytree(wandb_multirun, multirun, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
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
        assert ("symmetry" in runs[folder]["setting"]) is (_job_model(job) == "fcn_sym")
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
        (job / "summary.json").write_text(json.dumps({"method": name}))
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
    (job / "summary.json").write_text(json.dumps({"method": "TwoPathCNN*"}))
    job2 = tmp_path / "1_job"
    (job2 / ".hydra").mkdir(parents=True)
    (job2 / ".hydra" / "overrides.yaml").write_text("- havaei=localpath\n")
    (job2 / "metrics.json").write_text(json.dumps(metrics))
    (job2 / "summary.json").write_text(json.dumps({"method": "LocalPathCNN"}))
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
    proc = subprocess.run(
        [sys.executable, "-m", "brats_lightning.report", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no finished job" in proc.stderr


def test_havaei_run_sizes_follow_the_hardware(tmp_path: Path) -> None:
    """CPU runs are short; trainer=gpu/ddp train the paper's ~3-minute epochs (conf/scale/)."""
    out = str(tmp_path)
    cpu = compose(["model=twopath"], output_dir=out)
    gpu = compose(["model=twopath", "trainer=gpu"], output_dir=out)
    ddp = compose(["model=twopath", "trainer=ddp"], output_dir=out)
    assert (cpu.data.patches_per_epoch, cpu.callbacks.two_phase.phase2_epochs) == (25600, 1)
    assert (gpu.data.patches_per_epoch, gpu.callbacks.two_phase.phase2_epochs) == (300000, 5)
    assert ddp.data.patches_per_epoch == 300000 and gpu.trainer.benchmark and gpu.data.num_workers == "auto"
    # an experiment's CPU size applies on the CPU only
    stage = ["experiment=havaei_cascade", "model=twopath", "pipeline=null"]
    assert compose(stage, output_dir=out).data.patches_per_epoch == 8192
    assert compose([*stage, "trainer=gpu"], output_dir=out).data.patches_per_epoch == 300000
    assert compose(["experiment=havaei_table1", "havaei=twopath_star"], output_dir=out).data.patches_per_epoch == 12800


def test_the_papers_protocols_are_the_experiments_defaults(tmp_path: Path) -> None:
    out = str(tmp_path)
    for name in ("shen_symmetry", "shen_blocks"):
        cfg = compose([f"experiment={name}"], output_dir=out)
        # Shen et al. Sec. 3.2: 5-fold CV over all cases, no augmentation in CV
        assert cfg.data.test_fraction == 0.0 and cfg.data.num_folds == 5 and cfg.data.augment is False
        assert cfg.hydra.sweeper.params["data.fold"] == "0,1,2,3,4"
        assert cfg.model.postprocess is None
    for row in ("twopath_star", "localpath", "average_star"):
        cfg = compose(["experiment=havaei_table1", f"havaei={row}"], output_dir=out)
        if cfg.pipeline:  # AverageCNN*: its stages
            cfg = compose(
                ["experiment=havaei_table1", f"havaei={row}", "model=localpath", "pipeline=null"], output_dir=out
            )
        # Havaei et al. Sec. 4: 1% clipping, N4 on T1 and T1c, connected-component post-processing
        assert list(cfg.data.preprocess.n4) == ["t1", "t1c"] and list(cfg.data.preprocess.clip_percentiles) == [
            1.0,
            99.0,
        ]
        assert cfg.model.postprocess.min_volume_mm3 == 500
    mf = compose(
        ["experiment=havaei_table2", "model=mf_cascade", "model.first_stage_ckpt=x", "pipeline=null"], output_dir=out
    )
    assert mf.model.first_stage_dropout is False
