"""Helpers shared by the tests (imported as ``tests.helpers``; pyproject's pytest ``pythonpath`` has the root)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: real BraTS data, next to the repository; tests that use it are marked ``realdata``
SHARED_DATA = ROOT.parent / "shared" / "data"

#: the tiny synthetic data set of the fast suite (``tiny_dm_kwargs``), and the built-in one's size
TINY_SYNTHETIC = {"n_cases": 8, "shape": [48, 56, 32], "spacing": 2.5, "seed": 0}
MEDIUM_SYNTHETIC = {"n_cases": 8, "shape": [80, 96, 64], "spacing": 2.5, "seed": 1}


def shared(name: str) -> Path:
    """Path of a folder of ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


def synthetic_folder(cache_dir: Path, spec: dict[str, Any]) -> Path:
    """The folder where the data module writes the synthetic data set ``spec`` inside ``cache_dir``."""
    shape = "x".join(str(v) for v in spec["shape"])
    return cache_dir / f"synthetic-n{spec['n_cases']}-{shape}-sp{spec['spacing']}-seed{spec['seed']}"


def tiny_trainer(root: Path, epochs: int = 1, callbacks: Sequence[Any] = (), **overrides: Any) -> Any:
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


def run_main(main: Callable[[], Any], *overrides: str) -> None:
    """Run a Hydra command's ``main()`` in this process, as ``python -m ... overrides`` would.

    Hydra leaves the logging alone (``hydra/job_logging=none``), so that pytest's capture keeps working;
    ``HYDRA_FULL_ERROR=1`` lets a failure raise its own exception instead of a bare exit status.
    """
    argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [main.__module__, *overrides, "hydra/job_logging=none", "hydra/hydra_logging=none"]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    finally:
        sys.argv = argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
