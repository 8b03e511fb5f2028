"""Shared fixtures: tiny synthetic data sets, trained checkpoints, offline W&B (plain helpers: tests/helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MEDIUM_SYNTHETIC, TINY_SYNTHETIC, run_main, synthetic_folder, tiny_trainer

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(name="tiny_trainer", scope="session")
def tiny_trainer_fixture() -> Callable[..., Any]:
    """``tiny_trainer(root, epochs=1, callbacks=(), **trainer_overrides)`` builds a small CPU Trainer."""
    return tiny_trainer


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole session (synthetic data and prepared cases are reused)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_dm_kwargs(cache_dir: Path) -> dict:
    """Keyword arguments of a BratsDataModule over a tiny synthetic data set."""
    return {"synthetic": TINY_SYNTHETIC, "cache_dir": str(cache_dir), "crop_size": (48, 56), "batch_size": 4}


@pytest.fixture(scope="session")
def synthetic_root(cache_dir: Path) -> Path:
    """The tiny synthetic data set on disk (the same folder the data module generates)."""
    from brats_lightning.data.synthetic import write_dataset

    s = TINY_SYNTHETIC
    root = synthetic_folder(cache_dir, s)
    write_dataset(
        root, n_cases=s["n_cases"], shape=tuple(s["shape"]), spacing=s["spacing"], seed=s["seed"], progress=False
    )
    return root


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_dm_kwargs: dict) -> Path:
    """A small FCN (with symmetry maps) trained for a few steps on the tiny synthetic data."""
    import pytorch_lightning as pl

    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    out = tmp_path_factory.mktemp("trained")
    dm = BratsDataModule(symmetry=True, **tiny_dm_kwargs)
    model = FCNModule(8, 4, width=0.25, test_hd95=False)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True)
    trainer = tiny_trainer(out, 1, [ckpt_cb], limit_train_batches=6)
    trainer.fit(model, datamodule=dm)
    return out / "last.ckpt"


@pytest.fixture(scope="session")
def well_trained_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_dm_kwargs: dict) -> Path:
    """An FCN with symmetry maps trained until it segments synthetic cases (fp32; :func:`medium_root`)."""
    import pytorch_lightning as pl

    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    out = tmp_path_factory.mktemp("well_trained")
    pl.seed_everything(0)
    # the built-in synthetic data's own size (80x96x64 at 2.5 mm), so that regions span many voxels
    kwargs = {**tiny_dm_kwargs, "synthetic": MEDIUM_SYNTHETIC, "crop_size": (64, 80)}
    dm = BratsDataModule(symmetry=True, **kwargs)
    model = FCNModule(8, 4, width=0.25, test_hd95=False)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True)
    trainer = tiny_trainer(out, 8, [ckpt_cb], limit_train_batches=20, precision="32")
    trainer.fit(model, datamodule=dm)
    return out / "last.ckpt"


#: the shared multirun's options: Shen et al.'s symmetry experiment (FCN without and with symmetry maps) on two folds
#: of the tiny synthetic data, 2 epochs, 3 held-out test cases, offline W&B
MULTIRUN = [
    "-m",
    "experiment=shen_symmetry",
    "data.fold=0,1",
    "data.num_folds=2",
    "debug=default",
    "model.width=0.25",
    "data.test_fraction=0.4",
    "trainer.max_epochs=2",
    "logger=wandb",
]


@pytest.fixture(scope="session")
def multirun(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One real multirun for every test that reads one (the report, its ensembles, W&B groups, model loading):
    4 jobs (2 settings x 2 folds), each with its checkpoints, test results and offline W&B run. Read-only: copy it."""
    from brats_lightning.training.train import main

    sweep = tmp_path_factory.mktemp("multirun") / "sweep"
    run_main(main, *MULTIRUN, f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}")
    return sweep


@pytest.fixture(scope="session")
def medium_root(cache_dir: Path, well_trained_ckpt: Path) -> Path:
    """The synthetic cases the well-trained model learnt from (the built-in data set's size)."""
    return synthetic_folder(cache_dir, MEDIUM_SYNTHETIC)
