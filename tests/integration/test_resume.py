"""A killed run resumed from its last.ckpt, as a user resumes it: one shared killed-and-resumed run (two-phase
LocalPathCNN*, offline W&B) checked for the epochs trained, the weights, the callbacks' state and its W&B run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brats_lightning.callbacks.wandb_run import wandb_run_in_checkpoint
from brats_lightning.config import compose
from brats_lightning.training.train import main as train_main
from brats_lightning.training.train import train
from tests.helpers import ENV, file_epochs, logged_epochs, logged_steps, offline_run, run_main, wandb_state

#: phase 1 = epochs 0-1, phase 2 = epochs 2-3; the phase-1 "best" checkpoint is epoch 0 (monitor=epoch, mode=min),
#: so every later epoch is "not the best": a resume must not go back to it
COMMON = [
    "debug=default",
    "model=localpath",
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=3",
    "test=false",
    "logger=wandb",
    "callbacks.two_phase.phase1_epochs=2",
    "callbacks.two_phase.phase2_epochs=2",
    "callbacks.phase1_checkpoint.monitor=epoch",
    "callbacks.phase1_checkpoint.mode=min",
    "data.patches_per_epoch=256",
]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """The same run three ways: uninterrupted; SIGKILLed as soon as its last.ckpt holds epoch 1 (inside phase 1;
    frozen first, so that its W&B history up to the checkpoint reaches its file); resumed from that last.ckpt
    into a new run folder."""
    tmp = tmp_path_factory.mktemp("resume")
    common = [*COMMON, f"paths.cache_dir={cache_dir}"]
    run_main(train_main, *common, "logger=none", f"hydra.run.dir={tmp / 'whole'}")
    killed = tmp / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    run = subprocess.Popen(
        [sys.executable, "-m", "brats_lightning", *common, f"hydra.run.dir={killed}"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            if last.is_file() and _load(last)["epoch"] >= 1:
                break
            time.sleep(0.05)
        # frozen at its checkpoint (W&B's service process runs on), the run's history up to the checkpoint's
        # epoch reaches its .wandb file within a second (the logger's flush interval; W&B's default is 15 s),
        # then the run is killed, which ends the service at once, without a last write
        run.send_signal(signal.SIGSTOP)
        at_kill = _load(last)
        log = next((killed / "wandb").glob("offline-run-*/run-*.wandb"))
        flushed = time.monotonic() + 10
        while time.monotonic() < flushed and not set(range(at_kill["epoch"] + 1)) <= set(file_epochs(log)):
            time.sleep(0.1)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    # the checkpoints folder as it was at the kill (the resumed run reads last.ckpt; the best checkpoints of a
    # resume are looked for beside the file resumed from, never where its state says they were)
    kill_copy = tmp / "at_kill" / "last.ckpt"
    kill_copy.parent.mkdir()
    for ckpt in (killed / "checkpoints").glob("*.ckpt"):
        (kill_copy.parent / ckpt.name).write_bytes(ckpt.read_bytes())
    kill_copy.write_bytes(last.read_bytes())
    run_main(train_main, *common, f"ckpt_path={kill_copy}", f"hydra.run.dir={tmp / 'resumed'}")
    return {"whole": tmp / "whole", "killed": killed, "resumed": tmp / "resumed", "at_kill": at_kill, "last": kill_copy}


def test_a_killed_run_resumes_from_its_last_completed_epoch(killed_and_resumed: dict) -> None:
    run = killed_and_resumed
    final = _load(run["whole"] / "checkpoints" / "last.ckpt")
    assert final["epoch"] == 3  # last.ckpt of a finished run is its final epoch
    at_kill = run["at_kill"]["epoch"]
    assert 1 <= at_kill < 3, at_kill
    assert _load(run["killed"] / "checkpoints" / "phase1_best.ckpt")["epoch"] == 0
    # resumed into a new run folder: it trained only the epochs after the killed one, to the same step
    end = _load(run["resumed"] / "checkpoints" / "last.ckpt")
    assert end["epoch"] == 3 and end["global_step"] == final["global_step"]
    assert logged_epochs(offline_run(run["resumed"])["history"]) == list(range(at_kill + 1, 4))
    # the callbacks' state survived: best-so-far scores, the phase switch
    scores = {k: v.get("best_model_score") for k, v in end["callbacks"].items() if "best_model_score" in v}
    assert scores == {k: v.get("best_model_score") for k, v in final["callbacks"].items() if "best_model_score" in v}
    phase = next(v for k, v in end["callbacks"].items() if "TwoPhaseTraining" in k)
    assert phase["phase"] == 2 and phase["switch_epoch"] == 2
    # and the weights are those of the uninterrupted run (the seed allows it: loaders and dropout are reseeded)
    for k, v in final["state_dict"].items():
        torch.testing.assert_close(end["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)


def test_the_resumed_run_continues_the_same_wandb_run(killed_and_resumed: dict) -> None:
    run = killed_and_resumed
    at_kill = run["at_kill"]
    run_id = wandb_state(run["last"])["run_id"]
    assert wandb_run_in_checkpoint(run["last"]) == (run_id, "train")
    assert wandb_state(run["resumed"] / "checkpoints" / "last.ckpt")["run_id"] == run_id
    first, second = offline_run(run["killed"]), offline_run(run["resumed"])
    # one W&B run across both folders: the checkpoint's
    assert first["ids"] | second["ids"] == {run_id}
    assert first["folder"].endswith(run_id) and second["folder"].endswith(run_id)
    assert (first["group"], first["name"]) == (second["group"], second["name"]) == ("train", first["name"])
    # its history continues: the killed part validated the epochs up to its checkpoint's, the resumed part the rest
    assert logged_epochs(first["history"])[: at_kill["epoch"] + 1] == list(range(at_kill["epoch"] + 1))
    assert logged_epochs(second["history"]) == list(range(at_kill["epoch"] + 1, 4))
    steps = logged_steps(first["history"])
    before = [s for row, s in zip(first["history"], steps) if row["epoch"] <= at_kill["epoch"]]
    assert max(before) < at_kill["global_step"] <= min(logged_steps(second["history"]))
    assert logged_steps(second["history"]) == sorted(logged_steps(second["history"]))


def test_a_finished_run_resumed_from_its_last_checkpoint_finishes_as_it_did(tmp_path: Path, cache_dir: Path) -> None:
    """Resuming from the checkpoint of the last epoch (killed during the last validation's aftermath, the
    tuning or the test, or simply finished) tests, tunes and writes metrics as the uninterrupted run."""
    common = [
        "debug=default",
        "model.width=0.25",
        "callbacks=tuned",
        "~callbacks.budget_schedule",
        "trainer.max_epochs=1",
        "callbacks.tune_postprocess.min_volumes_mm3=[100]",
        f"paths.cache_dir={cache_dir}",
    ]
    first = train(compose(common, output_dir=str(tmp_path / "A")))
    resumed = train(
        compose([*common, f"ckpt_path={tmp_path / 'A' / 'checkpoints' / 'last.ckpt'}"], output_dir=str(tmp_path / "B"))
    )
    assert resumed["best_ckpt"] == str(tmp_path / "B" / "checkpoints" / "best.ckpt")
    for key in ("test/dice_wt", "test/dice_tc", "test/dice_et", "val/best_dice_mean", "train/steps"):
        assert resumed[key] == pytest.approx(first[key], abs=1e-6), key
    a, b = (torch.load(tmp_path / r / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True) for r in "AB")
    assert b["postprocess_tuning"] == a["postprocess_tuning"] and b["postprocess"] == a["postprocess"]
    assert json.loads((tmp_path / "B" / "metrics.json").read_text())["test/dice_mean"] == pytest.approx(
        first["test/dice_mean"], abs=1e-6
    )
    assert (tmp_path / "B" / "per_case.csv").read_text() == (tmp_path / "A" / "per_case.csv").read_text()
