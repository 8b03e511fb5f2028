"""Shared fixtures: tiny synthetic data sets, real-data locations, quiet logging."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent / "data"))  # symmetry_reference for the tests

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def shared(name: str) -> Path:
    """Path of a folder of ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


TINY_SYNTHETIC = {"n_cases": 8, "shape": [48, 56, 32], "spacing": 2.5, "seed": 0}
MEDIUM_SYNTHETIC = {"n_cases": 8, "shape": [80, 96, 64], "spacing": 2.5, "seed": 1}


def _tiny_trainer(root: Path, epochs: int = 1, callbacks: Sequence = (), **overrides: Any):
    """A real CPU Lightning Trainer for tests: no logger, no progress bar, one validation batch."""
    import pytorch_lightning as pl

    kwargs = {
        "accelerator": "cpu",
        "max_epochs": epochs,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
        "callbacks": list(callbacks),
    }
    return pl.Trainer(**{**kwargs, **overrides})


@pytest.fixture(scope="session")
def tiny_trainer() -> Callable[..., Any]:
    """``tiny_trainer(root, epochs=1, callbacks=(), **trainer_overrides)`` builds a small CPU Trainer."""
    return _tiny_trainer


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
    shape = "x".join(str(v) for v in s["shape"])
    root = cache_dir / f"synthetic-n{s['n_cases']}-{shape}-sp{s['spacing']}-seed{s['seed']}"
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
    trainer = _tiny_trainer(out, 1, [ckpt_cb], limit_train_batches=6)
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
    trainer = _tiny_trainer(out, 8, [ckpt_cb], limit_train_batches=20, precision="32")
    trainer.fit(model, datamodule=dm)
    return out / "last.ckpt"


@pytest.fixture(scope="session")
def medium_root(cache_dir: Path, well_trained_ckpt: Path) -> Path:
    """The synthetic cases the well-trained model learnt from (the built-in data set's size)."""
    s = MEDIUM_SYNTHETIC
    shape = "x".join(str(v) for v in s["shape"])
    return cache_dir / f"synthetic-n{s['n_cases']}-{shape}-sp{s['spacing']}-seed{s['seed']}"
