"""The acceptance runs on the synthetic default, end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _main(tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BRATS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "brats_lightning", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_symmetry_fcn_on_the_synthetic_default(tmp_path: Path) -> None:
    assert _main(tmp_path, "model=fcn_sym")["test/dice_wt"] >= 0.70


def test_twopath_on_the_synthetic_default(tmp_path: Path) -> None:
    assert _main(tmp_path, "model=twopath")["test/dice_wt"] >= 0.60


def test_cascade_pipeline_on_the_synthetic_default(tmp_path: Path) -> None:
    metrics = _main(tmp_path, "experiment=havaei_cascade")
    assert {"test/dice_wt", "test/dice_tc", "test/dice_et"} <= set(metrics)
    stages = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert list(stages) == ["twopath", "input_cascade"]
