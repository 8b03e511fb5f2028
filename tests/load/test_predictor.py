"""brats_lightning.load.predictor: ensembles of compatible checkpoints only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_lightning.errors import CheckpointError
from brats_lightning.inference.flips import tta_flips
from brats_lightning.load.predictor import check_compatible, load_model


def test_incompatible_checkpoints_are_refused_naming_both(trained_ckpt: Path) -> None:
    _, cfg = load_model(trained_ckpt)
    other = json.loads(json.dumps(cfg))
    other["symmetry"]["enabled"] = not cfg["symmetry"]["enabled"]
    assert check_compatible([cfg, json.loads(json.dumps(cfg))], ["a.ckpt", "b.ckpt"]) == cfg
    with pytest.raises(CheckpointError, match=r"b\.ckpt: cannot be ensembled with a\.ckpt: its symmetry"):
        check_compatible([cfg, other], ["a.ckpt", "b.ckpt"])
    with pytest.raises(ValueError, match="unknown test-time flip"):
        tta_flips(["up"])
