"""brats_lightning.callbacks.wandb_run: a checkpoint's W&B run id, read as checked data."""

from __future__ import annotations

from pathlib import Path

import torch

from brats_lightning.callbacks.wandb_run import (
    wandb_run_in_checkpoint,
)


def test_checkpoint_run_ids_are_read_as_checked_data(tmp_path: Path) -> None:
    ckpt = tmp_path / "x.ckpt"
    for state, expected in [
        ({"run_id": "ab12-x_9", "group": "train/sweep"}, ("ab12-x_9", "train/sweep")),
        ({"run_id": "../../etc", "group": "g\n"}, (None, None)),
        ({"run_id": "a" * 65}, (None, None)),
        ({"run_id": ["a"]}, (None, None)),
    ]:
        torch.save({"state_dict": {}, "callbacks": {"WandbRunId": state}}, ckpt)
        assert wandb_run_in_checkpoint(ckpt) == expected
    torch.save({"state_dict": {}}, ckpt)  # a checkpoint of a run without W&B
    assert wandb_run_in_checkpoint(ckpt) == (None, None)
