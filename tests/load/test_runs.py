"""brats_lightning.load.runs: the checkpoints a run, multirun or cross-validation folder names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from brats_lightning.errors import CheckpointError
from brats_lightning.load.runs import find_checkpoints


def test_a_predictor_list_may_not_point_outside_its_run(tmp_path: Path) -> None:
    from brats_lightning.load.runs import find_checkpoints

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere.ckpt").write_bytes(b"x")
    (run / "predictor.json").write_text(json.dumps({"checkpoints": ["../elsewhere.ckpt"]}))
    with pytest.raises(CheckpointError, match=r"predictor.json: '../elsewhere.ckpt' is outside the run folder"):
        find_checkpoints(run)
    (run / "predictor.json").write_text(json.dumps({"checkpoints": "fold_0"}))
    with pytest.raises(CheckpointError, match=r"predictor.json: checkpoints: Input should be a valid list"):
        find_checkpoints(run)


@pytest.mark.parametrize("doc", ["summary.json", "pipeline.json"])
def test_a_run_folder_file_names_only_checkpoints_inside_it(tmp_path: Path, doc: str) -> None:
    """Before: ``predict ckpt_path=<run folder>`` followed a ``summary.json`` naming another folder's checkpoint. Now
    what it names is looked for inside the run folder (a copied or moved run finds its own), never outside."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "epoch3.ckpt").write_bytes(b"z")
    (tmp_path / "outside").mkdir()
    other = tmp_path / "outside" / "other.ckpt"
    other.write_bytes(b"y")

    def found(named: str) -> list[Path]:
        content = (
            {"n_cases": 1, "metrics": {}, "checkpoint": named}
            if doc == "summary.json"
            else {"stage": {"dir": str(run), "best_ckpt": named}}
        )
        (run / doc).write_text(json.dumps(content))
        return find_checkpoints(run)

    for outside in (str(other), "../outside/other.ckpt", "/etc/passwd"):
        assert found(outside) == [run / "checkpoints" / "best.ckpt"]  # not followed: the run's own
    assert found("checkpoints/epoch3.ckpt") == [run / "checkpoints" / "epoch3.ckpt"]
    # a copy of a run: its record names the original's checkpoint, which is found in the copy
    assert found(str(tmp_path / "original" / "checkpoints" / "epoch3.ckpt")) == [run / "checkpoints" / "epoch3.ckpt"]


def test_checkpoints_are_found_in_run_and_multirun_folders(tmp_path: Path, trained_ckpt: Path) -> None:
    for job in ("0", "1"):
        (tmp_path / "multi" / job / "checkpoints").mkdir(parents=True)
        shutil.copy(trained_ckpt, tmp_path / "multi" / job / "checkpoints" / "best.ckpt")
    (tmp_path / "multi" / ".hydra").mkdir()
    found = find_checkpoints(tmp_path / "multi")
    assert found == [tmp_path / "multi" / j / "checkpoints" / "best.ckpt" for j in ("0", "1")]
    assert find_checkpoints(tmp_path / "multi" / "1") == [found[1]]
    assert find_checkpoints([str(found[0]), found[1]]) == found
    with pytest.raises(CheckpointError, match="no checkpoint in this folder"):
        find_checkpoints(tmp_path / "multi" / ".hydra")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_checkpoints(tmp_path / "nope")
