"""W&B groups: multirun jobs and cross-validations, read back from the offline runs' own files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import DictConfig

from brats_lightning.callbacks.wandb_run import (
    CV_RUN_ID_FILE,
    fold_runs,
    log_cross_validation,
)
from brats_lightning.config import compose
from tests.helpers import job_model, offline_run, wandb_records

SMALL = ["debug=default", "model.width=0.25", "test=false", "logger=wandb"]


def test_wandb_offline_multirun_makes_one_run_per_job(multirun: Path) -> None:
    jobs = sorted(p for p in multirun.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert sorted(job_model(j) for j in jobs) == ["fcn", "fcn", "fcn_sym", "fcn_sym"]
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
        assert state["hyper_parameters"]["in_channels"] == {"fcn": 4, "fcn_sym": 8}[job_model(job)]
    assert len(run_ids) == 4


def test_the_jobs_of_a_multirun_are_one_wandb_group(multirun: Path) -> None:
    jobs = sorted(p for p in multirun.iterdir() if (p / ".hydra").is_dir())
    runs = [offline_run(job) for job in jobs]
    assert len({r["id"] for r in runs}) == 4
    assert {r["group"] for r in runs} == {f"shen_symmetry/{multirun.name}"}
    # each job named by its own overrides (the sweep's values among them): four names
    assert len({r["name"] for r in runs}) == 4
    for job, run in zip(jobs, runs):
        fold = next(
            o for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if o.startswith("data.fold")
        )
        assert run["name"].startswith("shen_symmetry/") and f"{fold}," in run["name"]
        assert f"model={job_model(job)}" in run["name"]


def test_a_cross_validation_is_one_wandb_group_with_one_summary_run(tmp_path: Path) -> None:
    from brats_lightning.crossval.run import _fold_config
    from brats_lightning.training.train import _loggers

    run = tmp_path / "run"
    cfg = compose(["experiment=real_fast", "logger=wandb"], output_dir=str(run))

    def train(fold_cfg: DictConfig) -> dict:  # a fold's W&B run, as train() makes it
        import wandb

        (logger,) = _loggers(fold_cfg)
        logger.log_metrics({"val/dice_mean": 0.5 + fold_cfg.data.fold}, step=3)
        wandb.finish()
        return {}

    for k in range(2):  # the folds' configs as the cross-validation makes them
        fold_runs(cfg, train)(_fold_config(cfg, k, run / f"fold_{k}", None, None))
    figures = {"cv/dice_mean": 0.61, "cv/dice_wt": 0.8, "time/total_s": 12.0}
    summary_id = log_cross_validation(cfg, figures)
    folds = [offline_run(run / f"fold_{k}") for k in range(2)]
    summary = offline_run(run)
    assert summary["id"] == summary_id and len({summary_id, *(f["id"] for f in folds)}) == 3
    assert {f["group"] for f in folds} == {summary["group"]} == {"real_fast/run"}
    # named as the run (task and overrides), the folds after it
    assert (summary["name"], summary["job_type"]) == ("real_fast/logger=wandb", "cross-validation")
    assert [(f["name"], f["job_type"]) for f in folds] == [(f"{summary['name']}/fold_{k}", "fold") for k in range(2)]
    assert [f["history"][0]["val/dice_mean"] for f in folds] == [0.5, 1.5]
    assert {k: summary["summary"].get(k) for k in figures} == figures
    # a rerun in place updates the same summary run
    assert (run / "wandb" / CV_RUN_ID_FILE).read_text().strip() == summary_id
    assert log_cross_validation(cfg, {**figures, "cv/dice_mean": 0.62}) == summary_id
    logs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    ids = {r.run.run_id for log in logs for r in wandb_records(log) if r.WhichOneof("record_type") == "run"}
    assert len(logs) == 2 and ids == {summary_id}


def test_model_artifacts_are_logged_only_when_asked(tmp_path: Path, cache_dir: Path) -> None:
    """``logger.wandb.log_model=true``: the run's checkpoints become W&B model artifacts (offline: recorded in the
    run, uploaded by ``wandb sync``); by default none is."""
    from brats_lightning.training.train import train

    def artifacts(run: Path) -> list[Any]:
        (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
        return [r.artifact for r in wandb_records(log) if r.WhichOneof("record_type") == "artifact"]

    common = [*SMALL, f"paths.cache_dir={cache_dir}", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    train(compose([*common, "logger.wandb.log_model=true"], output_dir=str(tmp_path / "on")))
    logged = artifacts(tmp_path / "on")
    assert logged and {a.type for a in logged} == {"model"}
    names = {e.path for a in logged for e in a.manifest.contents}
    assert "model.ckpt" in names
    train(compose(common, output_dir=str(tmp_path / "off")))
    assert artifacts(tmp_path / "off") == []
