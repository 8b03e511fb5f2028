"""brats_lightning.callbacks.checkpoint: checkpoints written atomically on the run folder's own file system, and a
resume whose stored paths stay in the run folder (a last.ckpt is data: what it names is never followed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brats_lightning.config import compose
from brats_lightning.training.train import train
from tests.helpers import ENV, can_mount_tmpfs


def _python_on_tmpfs(folder: Path, options: str, script: str) -> subprocess.CompletedProcess:
    """``script`` run by Python with a tmpfs (``mount -o <options>``) on ``folder``, in a user and mount namespace."""
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o {options} none {folder} && {sys.executable} -c '{script}'"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip


def test_a_full_disk_never_leaves_a_half_written_checkpoint(tmp_path: Path) -> None:
    """On a real full file system (a 64 kB tmpfs): the checkpoint that does not fit is one line naming it, the one
    before it is intact, no temporary file is left. Before, Lightning wrote through a temporary file in /tmp and moved
    it across file systems, a copy into the real name: last.ckpt was left half written."""
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a small tmpfs here (unshare --user --mount is not permitted)")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    script = f"""
import torch, os
from brats_lightning.callbacks.checkpoint import AtomicCheckpointIO
from brats_lightning.errors import OutputError
io = AtomicCheckpointIO()
io.save_checkpoint({{"w": torch.ones(1000)}}, "{folder}/last.ckpt")
try:
    io.save_checkpoint({{"w": torch.ones(40000)}}, "{folder}/last.ckpt")
except OutputError as e:
    print("ERROR", e)
w = torch.load("{folder}/last.ckpt", weights_only=True)["w"]
print("KEPT", w.numel(), sorted(os.listdir("{folder}")))
"""
    proc = _python_on_tmpfs(folder, "size=64k", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ERROR {folder}/last.ckpt: No space left on device: cannot write it" in proc.stdout, proc.stdout
    assert "KEPT 1000 ['last.ckpt']" in proc.stdout, proc.stdout


def test_a_read_only_checkpoint_folder_is_one_line(tmp_path: Path) -> None:
    """A read-only file system (EROFS; a read-only tmpfs): one line naming the checkpoint, not an ``OSError``."""
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a small tmpfs here (unshare --user --mount is not permitted)")
    folder = tmp_path / "ro"
    folder.mkdir()
    script = f"""
from brats_lightning.callbacks.checkpoint import AtomicCheckpointIO
from brats_lightning.errors import OutputError
try:
    AtomicCheckpointIO().save_checkpoint({{"w": 1}}, "{folder}/last.ckpt")
except OutputError as e:
    print("ERROR", e)
"""
    proc = _python_on_tmpfs(folder, "size=64k,ro", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ERROR {folder}/last.ckpt: Read-only file system: cannot write it", proc.stdout


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, list[str]]:
    """A tiny finished run (one epoch, its best.ckpt and last.ckpt)."""
    common = [
        "debug=default",
        "model.width=0.25",
        "trainer.max_epochs=1",
        "logger=none",
        f"paths.cache_dir={cache_dir}",
    ]
    out = tmp_path_factory.mktemp("finished")
    train(compose(common, output_dir=str(out / "A")))
    return out / "A", common


def test_a_copied_last_checkpoint_resumes_without_its_run_folder(
    tmp_path: Path, finished_run: tuple[Path, list[str]]
) -> None:
    """Before: ``FileNotFoundError ... new/checkpoints/best.ckpt`` and no metrics (the best score was kept, its file
    was not there to copy)."""
    shared, common = finished_run
    run = tmp_path / "A"
    shutil.copytree(shared, run)  # a run of this test's own, whose folder is then gone
    elsewhere = tmp_path / "copied" / "last.ckpt"
    elsewhere.parent.mkdir()
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for cb_state in state["callbacks"].values():  # as if it had been written in this folder
        for key in ("dirpath", "best_model_path", "last_model_path"):
            if cb_state.get(key):
                cb_state[key] = str(cb_state[key]).replace(str(shared), str(run))
        if cb_state.get("best_k_models"):
            cb_state["best_k_models"] = {
                k.replace(str(shared), str(run)): v for k, v in cb_state["best_k_models"].items()
            }
    torch.save(state, elsewhere)
    shutil.rmtree(run)  # only the copied last.ckpt is left
    out = tmp_path / "B"
    # a finished run: nothing is left to train, and its best.ckpt went with its folder: the resumed checkpoint is tested
    results = train(compose([*common, f"ckpt_path={elsewhere}"], output_dir=str(out)))
    assert results["best_ckpt"] == str(elsewhere)
    assert "test/dice_mean" in json.loads((out / "metrics.json").read_text())


def test_a_last_checkpoint_naming_a_file_elsewhere_copies_and_deletes_nothing(
    tmp_path: Path, finished_run: tuple[Path, list[str]]
) -> None:
    """Before: the file its state named as the best checkpoint was copied into the new run folder, then read as a
    checkpoint (an ``UnpicklingError`` traceback)."""
    run, common = finished_run
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    named = 0
    for cb_state in state["callbacks"].values():
        if "best_model_path" in cb_state:
            cb_state["best_model_path"] = str(secret)
            cb_state["best_k_models"] = {str(secret): torch.tensor(1.0)}
            named += 1
    assert named == 2  # the best and the last checkpoints' states
    tampered = tmp_path / "given" / "last.ckpt"
    tampered.parent.mkdir()
    torch.save(state, tampered)
    out = tmp_path / "C"
    results = train(compose([*common, "trainer.max_epochs=2", f"ckpt_path={tampered}"], output_dir=str(out)))
    assert secret.read_text() == "not yours"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert Path(results["best_ckpt"]) == out / "checkpoints" / "best.ckpt"
