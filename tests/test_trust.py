"""Trust: checkpoints cannot run code, resumes lose nothing, runs skip only what is bad, errors are early and plain."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from brats_lightning.config import compose
from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import CheckpointError, ConfigError, DataError
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.load.checkpoint import check_fits, load_module
from brats_lightning.predict import predict_dir
from brats_lightning.training.train import train

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def _predict_cfg(**kw) -> dict:
    base = {
        "layout": "auto",
        "files": None,
        "output_convention": "auto",
        "probabilities": False,
        "postprocess": False,
        "postprocess_options": {},
        "overwrite": False,
        "device": "cpu",
        "batch_size": 8,
    }
    return OmegaConf.create({**base, **kw})


def _copy_case(case, dest: Path, new_id: str | None = None) -> Path:
    """A real copy of a synthetic case folder (optionally renamed, files included)."""
    src = Path(case.images["flair"]).parent
    d = dest / (new_id or case.case_id)
    d.mkdir(parents=True)
    for f in src.iterdir():
        (d / f.name.replace(case.case_id, new_id or case.case_id)).write_bytes(f.read_bytes())
    return d


# ------------------------------------------------------------------------------------- checkpoints


def test_a_crafted_checkpoint_cannot_run_code(tmp_path: Path, synthetic_root: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    # only plain strings: it loads under weights_only=True, and names a function to call
    torch.save(
        {"module_class": "subprocess.run", "hyper_parameters": {"args": ["touch", str(marker)]}, "state_dict": {}},
        evil,
    )
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: names the module class 'subprocess.run', which is not"):
        load_module(evil)
    proc = _cli(
        "brats_lightning.predict",
        f"ckpt_path={evil}",
        f"input_dir={synthetic_root}",
        f"output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is not a brats_lightning model" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()  # the command the checkpoint names was not run


def test_bad_checkpoints_are_named_and_explained(tmp_path: Path, trained_ckpt: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt: the checkpoint is empty \(0 bytes"):
        load_module(empty)
    data = trained_ckpt.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: the checkpoint is truncated or corrupt"):
        load_module(truncated)
    # weights that do not fit the hyper-parameters they come with
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["in_channels"] = 4
    tampered = tmp_path / "tampered.ckpt"
    torch.save(state, tampered)
    with pytest.raises(CheckpointError, match=r"tampered\.ckpt: its weights do not fit a FCNModule .*shape"):
        load_module(tampered)
    # resuming (or testing) another model's checkpoint: the differing hyper-parameters are named
    from brats_lightning.modules.fcn import FCNModule
    from brats_lightning.modules.patch import PatchCNNModule

    with pytest.raises(CheckpointError, match=r"in_channels=8 in the checkpoint, 4 here"):
        check_fits(trained_ckpt, FCNModule(4, 4, width=0.25))
    with pytest.raises(CheckpointError, match=r"it holds a FCNModule .*this run's model is a PatchCNNModule"):
        check_fits(trained_ckpt, PatchCNNModule("twopath", 8, 4))
    check_fits(trained_ckpt, FCNModule(8, 4, width=0.25))  # the right model passes


def _last_epochs(metrics_csv: Path) -> set[int]:
    """Epochs that a run trained (epoch-level training loss rows of its CSV log)."""
    with metrics_csv.open() as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")}


@pytest.mark.parametrize(
    "model, extra",
    [
        # one-phase FCN: best.ckpt is epoch 0 (monitor=epoch, mode=min), so every later epoch is "not the best"
        ("fcn", ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]),
        # two-phase LocalPathCNN: phase 1 = epochs 0-1, phase 2 = epochs 2-3; killed inside phase 1
        (
            "localpath",
            [
                "callbacks.two_phase.phase1_epochs=2",
                "callbacks.two_phase.phase2_epochs=2",
                "callbacks.phase1_checkpoint.monitor=epoch",
                "callbacks.phase1_checkpoint.mode=min",
                "data.patches_per_epoch=256",
            ],
        ),
    ],
)
def test_killed_run_resumes_from_its_last_completed_epoch(
    tmp_path: Path, cache_dir: Path, model: str, extra: list[str]
) -> None:
    common = [
        "brats_lightning",
        "debug=default",
        f"model={model}",
        *(["model.width=0.25"] if model == "fcn" else []),
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=3",
        "test=false",
        f"paths.cache_dir={cache_dir}",
        *extra,
    ]
    # 1. uninterrupted: last.ckpt of a finished run is its final epoch
    whole = tmp_path / "whole"
    proc = _cli(*common, f"hydra.run.dir={whole}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 3
    # 2. the same run, SIGKILLed as soon as last.ckpt holds epoch 1 (not the best epoch)
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
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    at_kill = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= at_kill < 3, at_kill
    best_name = "best.ckpt" if model == "fcn" else "phase1_best.ckpt"
    assert torch.load(killed / "checkpoints" / best_name, map_location="cpu", weights_only=True)["epoch"] == 0
    # 3. resumed into a new run folder: trains only the epochs after the killed one
    resumed = tmp_path / "resumed"
    proc = _cli(*common, f"ckpt_path={last}", f"hydra.run.dir={resumed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_epochs(resumed / "csv" / "metrics.csv") == set(range(at_kill + 1, 4))
    end = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert end["epoch"] == 3 and end["global_step"] == final["global_step"]
    # the callbacks' state survived: best-so-far scores, the phase switch
    scores = {k: v.get("best_model_score") for k, v in end["callbacks"].items() if "best_model_score" in v}
    assert scores == {k: v.get("best_model_score") for k, v in final["callbacks"].items() if "best_model_score" in v}
    if model == "localpath":
        phase = next(v for k, v in end["callbacks"].items() if "TwoPhaseTraining" in k)
        assert phase["phase"] == 2 and phase["switch_epoch"] == 2
    # and the weights are those of the uninterrupted run (the seed allows it: loaders and dropout are reseeded)
    for k, v in final["state_dict"].items():
        torch.testing.assert_close(end["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------- predict


def test_predict_completes_what_a_kill_or_a_new_option_left_missing(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    cases = discover_cases(synthetic_root)[:2]
    inp = tmp_path / "in"
    _copy_case(cases[0], inp, "A")
    _copy_case(cases[1], inp, "A_probs")  # a case whose name looked like A's probability map
    out = tmp_path / "out"
    first = predict_dir(_predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert sorted(first["done"]) == ["A", "A_probs"]
    # a rerun asking for probabilities completes them (today: skipped, never written)
    again = predict_dir(
        _predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), probabilities=True)
    )
    assert sorted(again["done"]) == ["A", "A_probs"] and not again["skipped"]
    a_probs = out / "probabilities" / "A.nii.gz"
    assert a_probs.is_file() and (out / "probabilities" / "A_probs.nii.gz").is_file()
    assert nib.load(out / "A_probs.nii.gz").ndim == 3 and nib.load(a_probs).ndim == 4  # no collision
    # a kill between the label map and the probability map, with a temporary file left behind
    a_probs.unlink()
    stale = out / "probabilities" / ".A.somehost_x-999999.tmp.nii.gz"
    stale.write_bytes(b"partial")
    dead = out / f".A_probs.{__import__('brats_lightning.files', fromlist=['x'])._HOST}-999999.tmp.nii.gz"
    dead.write_bytes(b"partial")
    os.utime(stale, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    third = predict_dir(
        _predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), probabilities=True)
    )
    assert third["done"] == ["A"] and third["skipped"] == ["A_probs"]
    assert a_probs.is_file() and not stale.exists() and not dead.exists()
    assert not list(out.rglob(".*tmp*"))


def test_predict_does_every_good_case_and_reports_the_bad_ones(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    cases = discover_cases(synthetic_root)[:5]
    inp = tmp_path / "in"
    good = _copy_case(cases[0], inp)
    (_copy_case(cases[1], inp) / f"{cases[1].case_id}_t1.nii.gz").unlink()  # missing modality
    d = _copy_case(cases[2], inp)
    (d / f"{cases[2].case_id}_t2.nii.gz").unlink()
    (d / f"{cases[2].case_id}_t2.nii.gz").mkdir()  # a directory where a file should be
    d = _copy_case(cases[3], inp)
    (d / f"{cases[3].case_id}_t1ce.nii.gz").unlink()
    (d / f"{cases[3].case_id}_t1ce.nii.gz").symlink_to(tmp_path / "gone.nii.gz")  # a broken link
    _copy_case(cases[4], inp)
    (inp / cases[4].case_id).rename(inp / "Renamed_case")  # files named for another case
    out = tmp_path / "out"
    report = predict_dir(_predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert report["done"] == [good.name]
    failed = report["failed"]
    assert "missing t1 image" in failed[cases[1].case_id]
    assert f"{cases[2].case_id}_t2.nii.gz: is a directory" in failed[cases[2].case_id]
    assert "broken symbolic link" in failed[cases[3].case_id]
    assert "no file named as the brats2018 layout expects" in failed["Renamed_case"]
    saved = json.loads((out / "predict_report.json").read_text())
    assert saved["failed"] == failed
    # the command exits non-zero and says why, without a traceback
    proc = _cli(
        "brats_lightning.predict",
        f"ckpt_path={trained_ckpt}",
        f"input_dir={inp}",
        f"output_dir={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1 and "4 case(s) failed" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------- evaluate


def test_evaluate_scores_the_good_cases_and_lists_the_bad_ones(tmp_path: Path, synthetic_root: Path) -> None:
    cases = discover_cases(synthetic_root)[:4]
    gt = tmp_path / "gt"
    for c in cases:
        _copy_case(c, gt)
    pred = tmp_path / "pred"
    pred.mkdir()
    for c in cases:
        (pred / f"{c.case_id}.nii.gz").write_bytes(Path(c.label).read_bytes())
    corrupt = gt / cases[0].case_id / f"{cases[0].case_id}_seg.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    (gt / cases[1].case_id / f"{cases[1].case_id}_seg.nii.gz").unlink()  # no label file
    img = nib.load(cases[2].label)
    nan = np.asarray(img.dataobj).astype(np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, img.affine), pred / f"{cases[2].case_id}.nii.gz")
    summary = evaluate_dirs(pred, gt, tmp_path / "eval")
    assert f"{cases[0].case_id}_seg.nii.gz: cannot read image" in summary["not_scored"][cases[0].case_id]
    assert f"no label file (expected {cases[1].case_id}_seg.nii.gz)" in summary["not_scored"][cases[1].case_id]
    assert f"{cases[2].case_id}.nii.gz: 1 NaN or infinite values" in summary["invalid"][cases[2].case_id]
    rows = list(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))
    assert sorted({r["case"] for r in rows}) == [cases[2].case_id, cases[3].case_id]
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_cases"] == 2
    proc = _cli(
        "brats_lightning.evaluate",
        f"pred_dir={pred}",
        f"gt_dir={gt}",
        f"out_dir={tmp_path / 'eval2'}",
        "hd95=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "3 case(s) could not be scored" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "eval2" / "per_case.csv").is_file()


# ------------------------------------------------------------------------------------- early errors


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.fold=7", r"data.fold must be one of 0..4"),
        ("trainer.max_epochs=-1", r"trainer.max_epochs=-1 trains without end"),
        ("data.crop_size=[50,56]", r"data.crop_size=\[50, 56\]: the 3-block FCN needs multiples of 4"),
        ("data.crop_size=[48]", r"data.crop_size: must be two positive integers"),
        ("data.batch_size=0", r"data.batch_size: Input should be greater than or equal to 1 \(got 0\)"),
        ("ckpt_path=/nonexistent/last.ckpt", r"ckpt_path=/nonexistent/last.ckpt: no such file"),
    ],
)
def test_bad_options_stop_before_any_data_is_prepared(tmp_path: Path, override: str, message: str) -> None:
    cache = tmp_path / "cache"
    cfg = compose(["debug=default", f"paths.cache_dir={cache}", override], output_dir=str(tmp_path / "run"))
    with pytest.raises((ConfigError, CheckpointError, Exception)) as info:
        train(cfg)
    from brats_lightning.errors import find_user_error

    err = find_user_error(info.value)
    assert err is not None and __import__("re").search(message, str(err)), info.value
    assert not cache.exists()  # nothing generated or prepared


def test_a_user_error_is_one_line_a_bug_keeps_its_traceback(tmp_path: Path, cache_dir: Path) -> None:
    proc = _cli("brats_lightning", "debug=default", "data.fold=9", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.fold must be one of 0..4")
    assert "Traceback" not in proc.stderr
    proc = _cli("brats_lightning.predict", "ckpt_path=x.ckpt", f"input_dir={tmp_path}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "error: missing option: output_dir" in proc.stderr
    proc = _cli(
        "brats_lightning.predict",
        "ckpt_path=x.ckpt",
        f"input_dir={tmp_path}",
        "output_dir=o",
        "output_convention=brats1999",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 2 and "error: output_convention='brats1999'" in proc.stderr


def test_unlabelled_training_case_is_refused_before_training(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "data"
    for c in discover_cases(synthetic_root)[:6]:
        _copy_case(c, root)
    unlabelled = sorted(root.iterdir())[2]
    (unlabelled / f"{unlabelled.name}_seg.nii.gz").unlink()
    cfg = compose(
        [
            "debug=default",
            "data=brats",
            f"data.root={root}",
            "data.crop_size=[48,56]",
            f"paths.cache_dir={tmp_path / 'c'}",
        ],
        output_dir=str(tmp_path / "run"),
    )
    with pytest.raises(DataError, match=rf"have no label file \({unlabelled.name};"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
