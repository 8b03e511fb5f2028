"""brats_lightning.files: atomic writes and checked torch.load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brats_lightning.errors import CheckpointError
from brats_lightning.files import atomic_path, load_torch_file, write_text_atomic


def test_atomic_path_keeps_the_old_file_on_error_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "pred.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.nii.gz"]


def test_load_torch_file_names_the_file(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    torch.testing.assert_close(load_torch_file(tmp_path / "ok.pt")["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match=r"nope\.pt: weights not found"):
        load_torch_file(tmp_path / "nope.pt", "weights")
    (tmp_path / "bad.pt").write_bytes(b"\x00junk")
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot read the checkpoint: not a torch file"):
        load_torch_file(tmp_path / "bad.pt")
