"""brats_lightning.report.ensembles: the ensemble of folds, and a results folder that may name nothing to call."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from brats_lightning.errors import ConfigError
from tests.helpers import job_model


def test_report_adds_the_ensemble_of_folds_scored_on_the_same_test_cases(tmp_path: Path, multirun: Path) -> None:
    """Two folds of a cross-validation multirun: the report's ensemble row; an ensemble of one fold's
    checkpoint twice must reproduce that fold's own test metrics (same test cases, same metrics)."""
    import csv

    from brats_lightning.report import write_report

    sweep = multirun
    rows = {r["setting"]: r for r in csv.DictReader(write_report(sweep, tmp_path / "r1")["results.csv"].open())}
    settings = {"FCN (3 blocks)", "FCN + symmetry (3 blocks)"}
    assert set(rows) == settings | {f"{s}, ensemble of 2 folds" for s in settings}
    assert 0.0 < float(rows["FCN (3 blocks), ensemble of 2 folds"]["dice_wt_mean"])
    # fold 0 twice: its own test metrics, exactly
    twice = tmp_path / "twice"
    fold0 = next(j for j in sorted(sweep.iterdir()) if (j / ".hydra").is_dir() and job_model(j) == "fcn"
                 and "data.fold=0" in (j / ".hydra" / "overrides.yaml").read_text())  # fmt: skip
    for i in (0, 1):
        shutil.copytree(fold0, twice / f"{i}_job", ignore=shutil.ignore_patterns("wandb"))
        ov = twice / f"{i}_job" / ".hydra" / "overrides.yaml"
        ov.write_text(ov.read_text().replace("data.fold=0", f"data.fold={i}"))
        # a shared folder whose config names a cache elsewhere: before, the report prepared the cases there
        conf = twice / f"{i}_job" / ".hydra" / "config.yaml"
        doc = yaml.safe_load(conf.read_text())
        doc["data"]["cache_dir"] = str(tmp_path / "elsewhere")
        conf.write_text(yaml.safe_dump(doc))
    rows = {r["setting"]: r for r in csv.DictReader(write_report(twice, tmp_path / "r2")["results.csv"].open())}
    assert not (tmp_path / "elsewhere").exists() and (tmp_path / "r2" / "cache").is_dir()
    own = json.loads((fold0 / "metrics.json").read_text())
    ens = rows["FCN (3 blocks), ensemble of 2 folds"]
    for key in ("dice_wt", "dice_tc", "dice_et", "ppv_wt", "sensitivity_et"):
        assert float(ens[f"{key}_mean"]) == pytest.approx(own[f"test/{key}"], abs=1e-5), key


def test_report_never_calls_what_a_results_folder_names(tmp_path: Path, multirun: Path) -> None:
    """A shared multirun folder whose job config names ``shutil.copyfile`` (or hides ``numpy.save`` in an
    option): the report refuses the ensemble row and says why; nothing named is called."""
    from brats_lightning.report import write_report
    from brats_lightning.report.ensembles import job_datamodule

    victim = tmp_path / "secret.txt"
    victim.write_text("secret")
    module = "brats_lightning.data.datamodule.BratsDataModule"
    for i, (data, message) in enumerate(
        [
            (
                {"_target_": "shutil.copyfile", "_args_": [str(victim), str(tmp_path / "MARKER0")]},
                "data._target_ names 'shutil.copyfile': only brats_lightning.data.datamodule.BratsDataModule",
            ),
            (  # the right class, with a callable hidden in one of its options
                {"_target_": module, "root": {"_target_": "numpy.save", "file": str(tmp_path / "MARKER1")}},
                "data.root._target_ names 'numpy.save': a results folder may not name code to call",
            ),
            ({"_target_": module, "fold": "1; rm -rf /"}, "(data): fold: Input should be a valid integer"),
        ]
    ):
        copy = tmp_path / f"multirun{i}"
        shutil.copytree(multirun, copy, ignore=shutil.ignore_patterns("report", "wandb"))
        job = sorted(p for p in copy.iterdir() if (p / ".hydra").is_dir())[0]
        setting = {"fcn": "FCN (3 blocks)", "fcn_sym": "FCN + symmetry (3 blocks)"}[job_model(job)]
        config = job / ".hydra" / "config.yaml"
        doc = yaml.safe_load(config.read_text())
        doc["data"] = data
        config.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError) as info:
            job_datamodule(job)
        assert str(info.value).startswith(str(config)) and message in str(info.value), info.value
        md = write_report(copy, tmp_path / f"report{i}")["results.md"].read_text()
        assert (
            f"{setting}, ensemble of 2 folds |" not in md and f"No ensemble of the folds of {setting}: {config}" in md
        )
        assert message in md and not list(tmp_path.glob("MARKER*"))
    # the untouched folder still gets its ensemble row (the check refuses only what it must)
    md = write_report(multirun, tmp_path / "clean")["results.md"].read_text()
    assert "FCN (3 blocks), ensemble of 2 folds" in md and "FCN + symmetry (3 blocks), ensemble of 2 folds" in md


def test_a_results_folder_whose_config_is_a_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    """A shared results folder whose ``.hydra/config.yaml`` expands into 10^9 nodes: one line naming it, at once
    (before the bounded reader, OmegaConf expanded it until the machine ran out of memory)."""
    from brats_lightning.report.ensembles import job_datamodule
    from tests.test_schema import LAUGHS

    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(LAUGHS)
    with pytest.raises(ConfigError, match=r"\.hydra/config.yaml: the run config is not usable YAML \(an alias"):
        job_datamodule(job)
