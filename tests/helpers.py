"""Helpers shared by the tests (imported as ``tests.helpers``; pyproject's pytest ``pythonpath`` has the root): one
home for running commands (in-process and as processes), copying and writing cases, ``predict``'s config, and
reading offline W&B runs back."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

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


#: the environment of a command run as a process: offline W&B, unbuffered output
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": ""}


def cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <args>`` as a separate process (offline W&B); for what only a process shows: its exit status
    as the shell sees it, a kill, several processes."""
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=timeout
    )


@dataclass
class Result:
    """What a command run in-process gave: its exit status and what it printed."""

    code: int
    out: str
    err: str


def run_command(main: Callable[[], Any], *overrides: str) -> Result:
    """Run a command's ``main()`` in this process, as ``python -m ... overrides`` would, and return its exit status
    (0 when it returned) and its output; a user error is ``Result(2, ..., "error: ...")`` as on the command line."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(main, *overrides)
        except SystemExit as e:
            code = int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def run_argv(main: Callable[[list[str]], Any], *argv: str) -> Result:
    """Run an argparse command's ``main(argv)`` in this process (``report``, ``sweep``, ``data.synthetic``): its exit
    status and output, as :func:`run_command`."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            returned = main(list(argv))
            code = returned if isinstance(returned, int) else 0
        except SystemExit as e:
            code = int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def predict_cfg(**options: Any) -> DictConfig:
    """``predict``'s config as the command composes it (``conf/predict.yaml``), with ``options`` over it; by default
    on the CPU, without test-time flips or clean-up (a test that wants them says so)."""
    from brats_lightning.config import compose

    cfg = compose(config_name="predict")
    OmegaConf.set_struct(cfg, False)
    for key, value in {"device": "cpu", "tta": False, "postprocess": False, **options}.items():
        cfg[key] = value
    return cfg


def copy_case(case: Any, dest: Path, new_id: str | None = None) -> Path:
    """A real copy of a case folder (``case``: its :class:`~brats_lightning.data.readers.CaseFiles`), optionally
    renamed, files included."""
    src = Path(case.images["flair"]).parent
    d = dest / (new_id or case.case_id)
    d.mkdir(parents=True)
    for f in src.iterdir():
        (d / f.name.replace(case.case_id, new_id or case.case_id)).write_bytes(f.read_bytes())
    return d


def copy_cases(src: Path, dest: Path, n: int) -> Path:
    """The first ``n`` case folders of the data set ``src``, copied into ``dest``."""
    from brats_lightning.data.layouts import discover_cases

    for case in discover_cases(src)[:n]:
        shutil.copytree(Path(case.images["flair"]).parent, dest / case.case_id)
    return dest


def md5s(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its MD5: a folder's state, to check that nothing changed it."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def write_brats_case(
    root: Path,
    case: str,
    shape=(12, 10, 6),
    affine=LPS,
    skip: tuple[str, ...] = (),
    label: bool = True,
    sep: str = "_",
    suffixes=("flair", "t1", "t1ce", "t2"),
) -> Path:
    d = root / case
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(case))
    for s in suffixes:
        if s in skip:
            continue
        nib.save(
            nib.Nifti1Image(rng.integers(0, 500, shape).astype(np.int16), affine),
            d / f"{case}{sep}{s}.nii.gz",
        )
    if label:
        seg = np.zeros(shape, np.uint8)
        seg[3:6, 3:6, 2:4] = 2
        seg[4, 4, 3] = 4
        nib.save(nib.Nifti1Image(seg, affine), d / f"{case}{sep}seg.nii.gz")
    return d


#: the 14 BraTS 2018 cases of ../shared/data/brats2018 (sites: 2013 x3, CBICA x3, TCIA01 x3, TCIA02 x2, ...)
BRATS18 = [
    "Brats18_2013_11_1",
    "Brats18_2013_20_1",
    "Brats18_2013_3_1",
    "Brats18_CBICA_ABM_1",
    "Brats18_CBICA_ALU_1",
    "Brats18_CBICA_AME_1",
    "Brats18_TCIA01_201_1",
    "Brats18_TCIA01_378_1",
    "Brats18_TCIA01_499_1",
    "Brats18_TCIA02_135_1",
    "Brats18_TCIA02_370_1",
    "Brats18_TCIA03_265_1",
    "Brats18_TCIA10_628_1",
    "Brats18_TCIA10_637_1",
]


def job_model(job: Path) -> str:
    """The ``model=`` option of a multirun job (from Hydra's record of its overrides)."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("model="))


# -- offline W&B runs, read back from their own files --------------------------------------------------------


def wandb_records(path: Path) -> list[Any]:
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


def _wandb_key(item: Any) -> str:
    """A history or summary item's key (W&B stores keys with a ``/`` as their parts)."""
    return item.key or "/".join(item.nested_key)


def offline_run(folder: Path) -> dict[str, Any]:
    """The one offline W&B run of a run folder: its id, group, job type, name, history rows and summary."""
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (log,) = runs[0].glob("run-*.wandb")
    info: dict[str, Any] = {"ids": set(), "history": [], "summary": {}, "folder": runs[0].name}
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info["ids"].add(r.run.run_id)
            info.update(group=r.run.run_group, job_type=r.run.job_type, name=r.run.display_name)
        elif kind == "history":
            info["history"].append({_wandb_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            info["summary"].update({_wandb_key(i): json.loads(i.value_json) for i in r.summary.update})
    (info["id"],) = info["ids"]
    return info


def logged_epochs(history: list[dict], key: str = "val/dice_mean") -> list[int]:
    """Epochs of the history rows that hold ``key`` (one per validated epoch), in the order logged."""
    return [int(row["epoch"]) for row in history if key in row]


def file_epochs(log: Path) -> list[int]:
    """Validated epochs in a (running) run's ``.wandb`` file so far."""
    rows = [
        {_wandb_key(i): i.value_json for i in r.history.item}
        for r in wandb_records(log)
        if r.WhichOneof("record_type") == "history"
    ]
    return logged_epochs(rows)


def logged_steps(history: list[dict]) -> list[int]:
    return [int(row["trainer/global_step"]) for row in history if "trainer/global_step" in row]


def wandb_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]["WandbRunId"]


# -- the optional sweep extra ---------------------------------------------------------------------------------------


def sweep_extra_missing() -> str | None:
    """Why the ``sweep`` extra cannot be used (its one-line message), or ``None`` when it can."""
    from brats_lightning.sweep.study import MissingExtraError, require_sweep_extra

    try:
        require_sweep_extra()
    except MissingExtraError as e:
        return str(e)
    return None


#: skips a test when the sweep extra is missing (the message says how to install it)
requires_sweep_extra = pytest.mark.skipif(
    sweep_extra_missing() is not None, reason=f"the sweep extra is missing: {sweep_extra_missing()}"
)


def can_mount_tmpfs(tmp_path: Path) -> bool:
    """Whether a small tmpfs can be mounted in a user and mount namespace here (``unshare``): the real full or
    read-only file systems of the fault tests."""
    probe = tmp_path / "probe-tmpfs"
    probe.mkdir(exist_ok=True)
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o size=8k none {probe}"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
