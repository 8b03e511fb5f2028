"""Trust, round two: files read back are data, runs resume from any point, every bad input is one plain line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from brats_lightning.config import compose
from brats_lightning.data import cache
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import CheckpointError, ConfigError, DataError, find_user_error
from brats_lightning.load.checkpoint import load_module
from brats_lightning.load.onnx import read_sidecar
from brats_lightning.load.predictor import load_predictor
from brats_lightning.predict import predict_dir
from brats_lightning.training.train import train

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def _md5s(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _copy_cases(src: Path, dest: Path, n: int) -> Path:
    for case in discover_cases(src)[:n]:
        shutil.copytree(Path(case.images["flair"]).parent, dest / case.case_id)
    return dest


def _predict_cfg(**kw) -> dict:
    base = {"postprocess": False, "postprocess_options": {}, "device": "cpu", "batch_size": 8, "tta": False}
    return OmegaConf.create({**base, **kw})


# ------------------------------------------------------------------------------------- 1. report runs nothing


def test_report_never_calls_what_a_results_folder_names(tmp_path: Path, cv_multirun: Path) -> None:
    """A shared multirun folder whose job config names ``shutil.copyfile`` (or hides ``numpy.save`` in an
    option): the report refuses the ensemble row and says why; nothing named is called."""
    from brats_lightning.report import write_report
    from brats_lightning.report.ensembles import job_datamodule

    victim = tmp_path / "secret.txt"
    victim.write_text("secret")
    module = "brats_lightning.data.datamodule.BratsDataModule"
    for i, (data, message) in enumerate(
        [
            (
                {"_target_": "shutil.copyfile", "_args_": [str(victim), str(tmp_path / "MARKER0")]},
                "data._target_ names 'shutil.copyfile': only brats_lightning.data.datamodule.BratsDataModule",
            ),
            (  # the right class, with a callable hidden in one of its options
                {"_target_": module, "root": {"_target_": "numpy.save", "file": str(tmp_path / "MARKER1")}},
                "data.root._target_ names 'numpy.save': a results folder may not name code to call",
            ),
            ({"_target_": module, "fold": "1; rm -rf /"}, "(data): fold: Input should be a valid integer"),
        ]
    ):
        multirun = tmp_path / f"multirun{i}"
        shutil.copytree(cv_multirun, multirun, ignore=shutil.ignore_patterns("report"))
        job = sorted(p for p in multirun.iterdir() if (p / ".hydra").is_dir())[0]
        config = job / ".hydra" / "config.yaml"
        doc = yaml.safe_load(config.read_text())
        doc["data"] = data
        config.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError) as info:
            job_datamodule(job)
        assert str(info.value).startswith(str(config)) and message in str(info.value), info.value
        md = write_report(multirun, tmp_path / f"report{i}")["results.md"].read_text()
        assert "ensemble of 2 folds |" not in md and f"No ensemble of the folds of FCN (3 blocks): {config}" in md
        assert message in md and not list(tmp_path.glob("MARKER*"))
    # the untouched folder still gets its ensemble row (the check refuses only what it must)
    assert "ensemble of 2 folds" in write_report(cv_multirun, tmp_path / "clean")["results.md"].read_text()


def test_the_data_options_are_declared_once() -> None:
    """DataOptions is the one declaration of data.*: every data config composes into it, the data module takes
    it (or the same options as keyword arguments), and an option it does not declare is refused by name."""
    from brats_lightning.config import compose, config_dir
    from brats_lightning.data.options import DataOptions
    from brats_lightning.errors import ConfigError

    for name in sorted(p.stem for p in (Path(config_dir()) / "data").glob("*.yaml")):
        data = OmegaConf.to_container(compose([f"data={name}", "data.root=x"]).data, resolve=True)
        assert isinstance(data, dict) and data.pop("_target_").endswith("BratsDataModule")
        assert set(data) <= set(DataOptions.model_fields), name
        DataOptions.of(data)
    options = DataOptions(batch_size=3, symmetry=True, symmetry_options={"window": 7})
    dm = BratsDataModule(options)
    assert dm.batch_size == 3 and dm.symmetry.enabled and dm.symmetry.window == 7
    assert BratsDataModule(batch_size=3, symmetry=True, symmetry_options={"window": 7}).options == options
    with pytest.raises(ConfigError, match=r"^data\.nope: Extra inputs are not permitted \(got 1\)$"):
        BratsDataModule(nope=1)
    with pytest.raises(ConfigError, match=r"^data\.symmetry_options\.window: must be odd \(got 8\)$"):
        BratsDataModule(symmetry_options={"window": 8})


# ------------------------------------------------------------------------------------- 2. resume from any point


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


# ------------------------------------------------------------------------------------- 3. bad inputs


@pytest.fixture()
def prepared(tmp_path: Path, synthetic_root: Path) -> tuple[BratsDataModule, dict]:
    """A data module over 5 copied synthetic cases, prepared into a cache of this test's own."""
    root = _copy_cases(synthetic_root, tmp_path / "data", 5)
    kwargs = {"root": str(root), "cache_dir": str(tmp_path / "cache"), "crop_size": (48, 56), "num_folds": 2}
    dm = BratsDataModule(test_fraction=0.2, **kwargs)
    dm.prepare_data()
    return dm, kwargs


def _fresh_process() -> None:
    """What a new process starts with: nothing mapped, nothing verified."""
    cache._VERIFIED.clear()
    cache.open_array.cache_clear()


def test_truncated_or_empty_cached_arrays_are_rebuilt_before_any_work(prepared: tuple) -> None:
    dm, kwargs = prepared
    folders = sorted(p for p in dm.prepared_dir.iterdir() if p.is_dir())
    reference = {f.name: np.load(f / "image.npy").copy() for f in folders}
    image = folders[0] / "image.npy"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # truncated (a killed copy)
    (folders[1] / "mask.npy").write_bytes(b"")  # zero bytes (a full disk)
    _fresh_process()
    again = BratsDataModule(test_fraction=0.2, **kwargs)
    again.prepare_data()
    again.setup("fit")
    for case in [*again.train_cases, *again.val_cases, *again.test_cases]:
        np.testing.assert_array_equal(case.image, reference[case.case_id])
        assert case.mask.shape == case.image[:, 0].shape


def test_a_changed_cached_array_is_caught_on_first_read_and_rebuilt_next_run(prepared: tuple) -> None:
    dm, kwargs = prepared
    dm.setup("fit")
    case = dm.train_cases[0]
    path = case.folder / "image.npy"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(raw))
    _fresh_process()
    with pytest.raises(DataError, match=rf"{path}: the prepared array does not match the checksum"):
        _ = case.image
    assert not (case.folder / "meta.json").exists()  # marked stale
    _fresh_process()
    again = BratsDataModule(test_fraction=0.2, **kwargs)
    again.prepare_data()  # prepared again
    again.setup("fit")
    assert [c for c in again.train_cases if c.case_id == case.case_id][0].image.shape == case.shape


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["budget_minutes=0"], "error: budget_minutes=0: the time budget must be positive"),
        (["budget_minutes=-5"], "error: budget_minutes=-5: the time budget must be positive"),
        (["budget_minutes=10", "reserve_minutes=10"], "error: reserve_minutes=10 must be at least 0 and less than"),
        (["budget_minutes=abc"], "error: budget_minutes must be a number of minutes, got 'abc'"),
    ],
)
def test_a_budget_that_cannot_work_is_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = _cli(
        "brats_lightning",
        "experiment=real_fast",
        f"data.root={tmp_path}",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache").exists()


def test_predict_never_writes_into_the_data_set(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    data = _copy_cases(synthetic_root, tmp_path / "data", 2)
    before = _md5s(data)
    case = sorted(data.iterdir())[0]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / case.name).symlink_to(case, target_is_directory=True)
    for out, message in [
        (data, "is input_dir"),
        (data / "predictions", "is inside input_dir"),
        (case / "seg", "is inside input_dir"),
        (case, "is input_dir"),  # (a case folder given as the input folder)
    ]:
        inp = case if out == case else data
        with pytest.raises(ConfigError, match=rf"output_dir={out} {message}"):
            predict_dir(_predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    # a case folder reached through a link: the output is inside the case's real folder
    with pytest.raises(ConfigError, match=r"is inside the case folder"):
        predict_dir(_predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(outside), output_dir=str(case / "preds")))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=rf"output_dir={a_file}: is an existing file"):
        predict_dir(_predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(data), output_dir=str(a_file)))
    assert _md5s(data) == before and not (data / "predictions").exists() and a_file.read_text() == "x"
    proc = _cli(
        "brats_lightning.predict",
        f"ckpt_path={trained_ckpt}",
        f"input_dir={data}",
        f"output_dir={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: output_dir={data} is")
    assert "Traceback" not in proc.stderr and _md5s(data) == before


def _sidecar(trained_ckpt: Path) -> dict:
    """The sidecar ``export`` writes for the trained model (without running the export)."""
    model, data_config = load_module(trained_ckpt)
    return {
        "format": 1,
        "name": model.display_name,
        "module_class": "brats_lightning.modules.fcn.FCNModule",
        "in_channels": 8,
        "num_classes": 4,
        "convention": "brats2017",
        "input_padding": {"divisor": 4, "before": 0, "after": 0},
        "postprocess": None,
        "tta_flips": [],
        "data_config": data_config,
        "inference_batch_size": 4,
    }


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize(
    "change, message",
    [
        ({"convention": "../../etc/passwd"}, r"convention: String should match pattern .* \(got '../../etc/passwd'\)"),
        ({"convention": "brats1999"}, r"convention: unknown label convention 'brats1999'"),
        ({"tta_flips": "lr"}, r"tta_flips: Input should be a valid list"),
        ({"tta_flips": ["lr", "rm"]}, r"tta_flips: unknown flips \['rm'\]"),
        ({"inference_batch_size": "4; x"}, r"inference_batch_size: Input should be a valid integer"),
        ({"input_padding": {"divisor": 4, "x": 1}}, r"input_padding.x: Extra inputs are not permitted"),
        ({"input_padding": {"divisor": 1e9}}, r"input_padding.divisor: Input should be a valid integer"),
        ({"input_padding": {"divisor": 10**9}}, r"input_padding.divisor: Input should be less than or equal to 1024"),
        ({"input_padding": {"before": -3}}, r"input_padding.before: Input should be greater than or equal to 0"),
        ({"data_config": {"symmetry": {"x": 1}}}, r"data_config.symmetry.x: Extra inputs are not permitted"),
        ({"data_config": {"modalities": ["flair", "../t1"]}}, r"data_config.modalities.1: String should match"),
        ({"postprocess": {"min_volume_mm3": "big"}}, r"postprocess.min_volume_mm3: Input should be a valid number"),
        ("deep", r"nested more than 32 levels deep"),
        ("not json", r"is not valid JSON"),
    ],
)
def test_a_tampered_export_sidecar_is_named_and_refused(
    tmp_path: Path, trained_ckpt: Path, change: dict | str, message: str
) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read: the sidecar is checked first")
    side = tmp_path / "model.json"
    meta = _sidecar(trained_ckpt)
    side.write_text(json.dumps(meta))
    assert read_sidecar(onnx)["data_config"] == json.loads(json.dumps(meta["data_config"]))  # as written: fine
    if change == "deep":
        side.write_text(f'{{"format": 1, "x": {_deep(100_000)}}}')
    elif change == "not json":
        side.write_text("{format: 1")
    else:
        assert isinstance(change, dict)
        for key, value in change.items():
            meta[key] = {**meta[key], **value} if isinstance(value, dict) and key != "postprocess" else value
            if key == "data_config":
                meta[key]["symmetry"] = {**meta[key]["symmetry"], **value.get("symmetry", {})}
        side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"^{side}: .*{message}"):
        load_predictor(onnx)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data_config.convention", "../../etc/passwd", r"\(data_config\): convention: String should match pattern"),
        ("data_config.symmetry.evil", 1, r"\(data_config\): symmetry.evil: Extra inputs are not permitted"),
        ("data_config.preprocess.margin", -1, r"preprocess.margin: Input should be greater than or equal to 0"),
        ("data_config.preprocess.clip_percentiles", [99, 1], r"the low percentile must be below the high one"),
        ("tta_flips", "lr", r"\(tta_flips\): tta_flips: Input should be a valid list"),
        ("postprocess", {"min_slices": "3"}, r"\(postprocess\): min_slices: Input should be a valid integer"),
        ("hyper_parameters._instantiator", "os.system", r"hyper-parameters name a Lightning _instantiator"),
    ],
)
def test_a_tampered_checkpoint_is_named_and_refused(
    tmp_path: Path, trained_ckpt: Path, key: str, value: object, message: str
) -> None:
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    *parents, leaf = key.split(".")
    node = state
    for p in parents:
        node = node[p]
    node[leaf] = value
    bad = tmp_path / "tampered.ckpt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=rf"^{bad}.*{message}"):
        load_module(bad)
    data = tmp_path / "in"
    proc = _cli(
        "brats_lightning.predict",
        f"ckpt_path={bad}",
        f"input_dir={data}",
        f"output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2 and f"error: {bad}" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------- 4. a full disk


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o size=8k none {probe}"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_predict_stops_at_the_first_full_disk_error(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    """A real full file system (a 24 kB tmpfs in a user and mount namespace): one line naming the file,
    no later case tried, no report claiming more than what is on disk (an earlier one is gone)."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a small tmpfs here (unshare --user --mount is not permitted)")
    data = _copy_cases(synthetic_root, tmp_path / "data", 6)
    out = tmp_path / "out"
    out.mkdir()
    stale = {"done": sorted(p.name for p in data.iterdir()), "failed": {}}
    script = (
        f"mount -t tmpfs -o size=24k none {out} && "
        f"echo '{json.dumps(stale)}' > {out}/predict_report.json && "
        f"{sys.executable} -m brats_lightning.predict ckpt_path={trained_ckpt} input_dir={data} output_dir={out} "
        f"num_workers=0 hydra.run.dir={tmp_path / 'run'}; rc=$?; "
        f"ls -a {out} > {tmp_path / 'listing'}; cat {out}/predict_report.json > {tmp_path / 'report'} 2>/dev/null; "
        "exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/") and "No space left on device" in last, last
    assert "Traceback" not in proc.stderr
    written = int(last.split("stopped at the first full-disk error: ")[1].split(" case")[0])
    not_tried = int(last.split("written, ")[1].split(" not attempted")[0])
    assert written + 1 + not_tried == 6 and not_tried >= 1  # stopped at the first failure
    listing = (tmp_path / "listing").read_text().split()
    on_disk = {n.removesuffix(".nii.gz") for n in listing if n.endswith(".nii.gz") and not n.startswith(".")}
    assert len(on_disk) == written and not [n for n in listing if ".tmp" in n]  # no half-written file
    report = (tmp_path / "report").read_text()
    if report:  # written only if it fitted; then it says what is on disk, never the earlier run's claim
        doc = json.loads(report)
        assert set(doc["done"]) == on_disk and len(doc["not_attempted"]) == not_tried
    assert "predict_report.json" not in listing or report


# ------------------------------------------------------------------------------------- 5. smaller


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_could_run_code_is_refused_as_such(tmp_path: Path, trained_ckpt: Path) -> None:
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    for i, legacy in enumerate((False, True)):
        evil = tmp_path / f"evil{i}.ckpt"
        torch.save({**state, "extra": _RunsCode()}, evil, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=rf"{evil}: the checkpoint holds Python objects that could run code"):
            load_module(evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"state_dict": {}, "x": _RunsCode()}))
    with pytest.raises(CheckpointError, match=r"could run code \(it names posix.system\)"):
        load_module(plain)
    assert not Path("PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_a_predict_that_fails_leaves_no_empty_output_folder(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    data = _copy_cases(synthetic_root, tmp_path / "data", 1)
    out = tmp_path / "new" / "out"
    with pytest.raises(ConfigError, match=r"postprocess_options: min_slices: Input should be a valid integer"):
        predict_dir(
            _predict_cfg(
                ckpt_path=str(trained_ckpt),
                input_dir=str(data),
                output_dir=str(out),
                postprocess=True,
                postprocess_options={"min_slices": "three"},
            )
        )
    assert not (tmp_path / "new").exists()
    # a failure after the folder was made (no case can be read) leaves the report, not an empty folder
    (next(data.iterdir()) / f"{next(data.iterdir()).name}_t1.nii.gz").write_bytes(b"broken")
    report = predict_dir(_predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(data), output_dir=str(out)))
    assert report["failed"] and (out / "predict_report.json").is_file()


def test_a_user_error_in_a_loader_worker_is_one_line() -> None:
    from brats_lightning.errors import one_line

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nbrats_lightning.errors.DataError: /c/image.npy: the prepared array does not'
    )
    assert one_line(wrapped) == "/c/image.npy: the prepared array does not"
    assert find_user_error(RuntimeError("x")) is None
