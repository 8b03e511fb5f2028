"""W&B runs follow the checkpoint (a killed run resumed from its last.ckpt continues its W&B run), and multiruns
and cross-validations group their jobs; everything offline, read back from the runs' own ``.wandb`` files."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from brats_lightning.callbacks.wandb_run import (
    CV_RUN_ID_FILE,
    fold_runs,
    log_cross_validation,
    wandb_run_in_checkpoint,
)
from brats_lightning.config import compose

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": ""}
SMALL = ["debug=default", "model.width=0.25", "test=false", "logger=wandb"]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


# -- reading an offline run back: its .wandb file is a LevelDB-style log of protobuf records --------------------


def _records(path: Path) -> list[Any]:
    """The protobuf ``Record``s of a ``run-<id>.wandb`` file, up to the first incomplete or corrupt one (a killed
    run's file may end inside a record).

    The format (W&B's transaction log): a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0), then 32 KiB
    blocks of chunks, each ``crc32(type + data)``, ``length`` (little-endian), ``type`` (1 full, 2 first,
    3 middle, 4 last) and the data; a block's tail shorter than a chunk header is padding.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path}: not a W&B transaction log"
    out, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        if kind == 0 or len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            break
        pos += 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def _key(item: Any) -> str:
    """A history or summary item's key (W&B stores keys with a ``/`` as their parts)."""
    return item.key or "/".join(item.nested_key)


def _offline_run(folder: Path) -> dict[str, Any]:
    """The one offline W&B run of a run folder: its id, group, job type, name, history rows and summary."""
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (log,) = runs[0].glob("run-*.wandb")
    info: dict[str, Any] = {"ids": set(), "history": [], "summary": {}, "folder": runs[0].name}
    for r in _records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info["ids"].add(r.run.run_id)
            info.update(group=r.run.run_group, job_type=r.run.job_type, name=r.run.display_name)
        elif kind == "history":
            info["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            info["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    (info["id"],) = info["ids"]
    return info


def _epochs(history: list[dict], key: str = "val/dice_mean") -> list[int]:
    """Epochs of the history rows that hold ``key`` (one per validated epoch), in the order logged."""
    return [int(row["epoch"]) for row in history if key in row]


def _file_epochs(log: Path) -> list[int]:
    """Validated epochs in a (running) run's ``.wandb`` file so far."""
    rows = [
        {_key(i): i.value_json for i in r.history.item}
        for r in _records(log)
        if r.WhichOneof("record_type") == "history"
    ]
    return _epochs(rows)


def _steps(history: list[dict]) -> list[int]:
    return [int(row["trainer/global_step"]) for row in history if "trainer/global_step" in row]


def _wandb_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]["WandbRunId"]


# -- resume ------------------------------------------------------------------------------------------------------


def test_killed_run_resumed_from_its_checkpoint_continues_the_same_wandb_run(tmp_path: Path, cache_dir: Path) -> None:
    common = ["brats_lightning", *SMALL, "trainer.max_epochs=4", "trainer.limit_train_batches=3",
              f"paths.cache_dir={cache_dir}"]  # fmt: skip
    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    run = subprocess.Popen(
        [sys.executable, "-m", *common, f"hydra.run.dir={killed}"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            if last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 1:
                break
            time.sleep(0.05)
        # frozen at its checkpoint (W&B's service process runs on), the run's history up to the checkpoint's
        # epoch reaches its .wandb file within a second (the logger's flush interval; W&B's default is 15 s),
        # then the run is killed, which ends the service at once, without a last write
        run.send_signal(signal.SIGSTOP)
        at_kill = torch.load(last, map_location="cpu", weights_only=True)
        log = next((killed / "wandb").glob("offline-run-*/run-*.wandb"))
        flushed = time.monotonic() + 10
        while time.monotonic() < flushed and not set(range(at_kill["epoch"] + 1)) <= set(_file_epochs(log)):
            time.sleep(0.1)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert 1 <= at_kill["epoch"] < 3, at_kill["epoch"]
    run_id = _wandb_state(last)["run_id"]
    assert wandb_run_in_checkpoint(last) == (run_id, "train")
    # resumed into a new run folder
    resumed = tmp_path / "resumed"
    proc = _cli(*common, f"ckpt_path={last}", f"hydra.run.dir={resumed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _wandb_state(resumed / "checkpoints" / "last.ckpt")["run_id"] == run_id
    first, second = _offline_run(killed), _offline_run(resumed)
    # one W&B run across both folders: the checkpoint's
    assert first["ids"] | second["ids"] == {run_id}
    assert first["folder"].endswith(run_id) and second["folder"].endswith(run_id)
    assert (first["group"], first["name"]) == (second["group"], second["name"]) == ("train", first["name"])
    # its history continues: the killed part validated the epochs up to its checkpoint's, the resumed part the rest
    assert _epochs(first["history"])[: at_kill["epoch"] + 1] == list(range(at_kill["epoch"] + 1))
    assert _epochs(second["history"]) == list(range(at_kill["epoch"] + 1, 4))
    before = [s for row, s in zip(first["history"], _steps(first["history"])) if row["epoch"] <= at_kill["epoch"]]
    assert max(before) < at_kill["global_step"] <= min(_steps(second["history"]))
    assert _steps(second["history"]) == sorted(_steps(second["history"]))


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


# -- groups -------------------------------------------------------------------------------------------------------


def test_the_jobs_of_a_multirun_are_one_wandb_group(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _cli("brats_lightning", "-m", *SMALL, "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                "seed=1,2", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [_offline_run(job) for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())]
    assert len({r["id"] for r in runs}) == 2
    assert {r["group"] for r in runs} == {"train/sweep"}
    # each job named by its overrides
    names = sorted(r["name"] for r in runs)
    assert [n.startswith("train/") and f"seed={s}," in n for n, s in zip(names, (1, 2))] == [True, True]


def test_a_cross_validation_is_one_wandb_group_with_one_summary_run(tmp_path: Path) -> None:
    from brats_lightning.crossval.run import _fold_config
    from brats_lightning.training.train import _loggers

    run = tmp_path / "run"
    cfg = compose(["experiment=real_fast", "logger=wandb"], output_dir=str(run))

    def train(fold_cfg: DictConfig) -> dict:  # a fold's W&B run, as train() makes it
        import wandb

        (logger,) = _loggers(fold_cfg)
        logger.log_metrics({"val/dice_mean": 0.5 + fold_cfg.data.fold}, step=3)
        wandb.finish()
        return {}

    for k in range(2):  # the folds' configs as the cross-validation makes them
        fold_runs(cfg, train)(_fold_config(cfg, k, run / f"fold_{k}", None, None))
    figures = {"cv/dice_mean": 0.61, "cv/dice_wt": 0.8, "time/total_s": 12.0}
    summary_id = log_cross_validation(cfg, figures)
    folds = [_offline_run(run / f"fold_{k}") for k in range(2)]
    summary = _offline_run(run)
    assert summary["id"] == summary_id and len({summary_id, *(f["id"] for f in folds)}) == 3
    assert {f["group"] for f in folds} == {summary["group"]} == {"real_fast/run"}
    # named as the run (task and overrides), the folds after it
    assert (summary["name"], summary["job_type"]) == ("real_fast/logger=wandb", "cross-validation")
    assert [(f["name"], f["job_type"]) for f in folds] == [(f"{summary['name']}/fold_{k}", "fold") for k in range(2)]
    assert [f["history"][0]["val/dice_mean"] for f in folds] == [0.5, 1.5]
    assert {k: summary["summary"].get(k) for k in figures} == figures
    # a rerun in place updates the same summary run
    assert (run / "wandb" / CV_RUN_ID_FILE).read_text().strip() == summary_id
    assert log_cross_validation(cfg, {**figures, "cv/dice_mean": 0.62}) == summary_id
    logs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    ids = {r.run.run_id for log in logs for r in _records(log) if r.WhichOneof("record_type") == "run"}
    assert len(logs) == 2 and ids == {summary_id}
