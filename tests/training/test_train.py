"""brats_lightning.training.train: train(cfg) end to end, its outputs, and options refused before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from brats_lightning.config import compose
from brats_lightning.data.labels import REGIONS
from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import CheckpointError, ConfigError, DataError
from brats_lightning.training.train import train
from tests.helpers import copy_case


def test_method_names_follow_the_model_config_and_two_phase_training() -> None:
    from brats_lightning.callbacks.two_phase import TwoPhaseTraining
    from brats_lightning.config import compose
    from brats_lightning.modules.fcn import FCNModule
    from brats_lightning.modules.patch import PatchCNNModule
    from brats_lightning.training.train import method_name

    names = {m: compose([f"model={m}"], output_dir="/tmp/x").model.name for m in ("fcn", "fcn4_sym", "mf_cascade")}
    assert names == {"fcn": "FCN (3 blocks)", "fcn4_sym": "FCN + symmetry (4 blocks)", "mf_cascade": "MFCascadeCNN"}
    assert method_name(PatchCNNModule("twopath", name="TwoPathCNN"), [TwoPhaseTraining()]) == "TwoPathCNN*"
    assert method_name(PatchCNNModule("twopath", name="TwoPathCNN"), []) == "TwoPathCNN"
    assert method_name(FCNModule(), []) == "FCNModule"


def _overrides(cache_dir: Path, *extra: str) -> list[str]:
    return [
        "debug=default",
        f"paths.cache_dir={cache_dir}",
        "trainer.limit_train_batches=3",
        *extra,
    ]


def _rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "per_case.csv").open()))


def _first_conv_inputs(state: dict) -> int:
    """Input channels of the first convolution of a checkpoint's weights (what the net was really built for)."""
    return int(next(w for w in state["state_dict"].values() if w.ndim == 4).shape[1])


@pytest.mark.parametrize("model", ["fcn_sym", "fcn4"])
def test_train_writes_checkpoint_metrics_and_per_case_csv(tmp_path: Path, cache_dir: Path, model: str) -> None:
    cfg = compose(_overrides(cache_dir, f"model={model}", "model.width=0.25"), output_dir=str(tmp_path))
    results = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    rows = _rows(tmp_path)
    # the test set is the data module's held-out split: every test case, each region once, nothing else
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    test_ids = sorted(c.case_id for c in dm.test_cases)
    assert sorted({r["case"] for r in rows}) == test_ids and len(test_ids) >= 1
    assert sorted((r["case"], r["region"]) for r in rows) == [(c, g) for c in test_ids for g in sorted(REGIONS)]
    # every reported value is the mean over the cases of its region, in the results and in metrics.json
    for region in REGIONS:
        for metric in ("dice", "sensitivity", "specificity", "ppv"):
            mean = float(np.mean([float(r[metric]) for r in rows if r["region"] == region]))
            assert saved[f"test/{metric}_{region}"] == pytest.approx(mean, abs=1e-5), (metric, region)
            assert results[f"test/{metric}_{region}"] == pytest.approx(saved[f"test/{metric}_{region}"])
    assert saved["test/dice_mean"] == pytest.approx(np.mean([saved[f"test/dice_{r}"] for r in REGIONS]))
    ckpts = {p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")}
    assert ckpts == {"best.ckpt", "last.ckpt"} and Path(results["best_ckpt"]).name == "best.ckpt"
    # checkpoints hold no pickled objects: they load with weights_only=True
    state = torch.load(results["best_ckpt"], map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["in_channels"] == _first_conv_inputs(state) == (8 if "sym" in model else 4)
    assert state["hyper_parameters"]["n_blocks"] == (4 if model == "fcn4" else 3)
    logged = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert any(r.get("train/loss") or r.get("train/loss_epoch") for r in logged)
    # testing the saved checkpoint again gives the same per-case metrics: what was reported is what was saved
    retest = compose(
        _overrides(cache_dir, f"model={model}", "model.width=0.25", "train=false", f"ckpt_path={results['best_ckpt']}"),
        output_dir=str(tmp_path / "retest"),
    )
    train(retest)
    again = _rows(tmp_path / "retest")
    assert [(r["case"], r["region"]) for r in again] == [(r["case"], r["region"]) for r in rows]
    for a, b in zip(rows, again):
        for metric in ("dice", "sensitivity", "specificity", "ppv"):
            assert float(a[metric]) == pytest.approx(float(b[metric]), abs=1e-6)


def test_real_data_config_requires_a_root(tmp_path: Path) -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose(["data=brats"], output_dir=str(tmp_path))
    with pytest.raises(InstantiationException, match="data.root is not set"):
        instantiate(cfg.data)


@pytest.mark.parametrize("model", ["fcn", "fcn_sym", "fcn4_sym", "localpath", "globalpath", "twopath"])
def test_subset_of_modalities_sets_the_input_channels(tmp_path: Path, model: str) -> None:
    cfg = compose([f"model={model}", "data.modalities=[flair,t1c]"], output_dir=str(tmp_path))
    assert cfg.model.in_channels == (4 if "sym" in model else 2)
    cfg = compose([f"model={model}", "data=deepmedic", "data.root=x"], output_dir=str(tmp_path))
    assert cfg.model.num_classes == 5 and cfg.data.files.mask == "brainmask.nii.gz"


@pytest.mark.parametrize("model", ["fcn_sym", "twopath"])
def test_two_modalities_train_end_to_end(tmp_path: Path, cache_dir: Path, model: str) -> None:
    cfg = compose(
        _overrides(
            cache_dir,
            f"model={model}",
            "data.modalities=[flair,t1c]",
            "data.symmetry_options.axis_modality=t1c",
            "data.patches_per_epoch=64",
            "logger=none",
            "trainer.limit_train_batches=2",
        )
        + (["model.width=0.25"] if model == "fcn_sym" else []),
        output_dir=str(tmp_path),
    )
    results = train(cfg)
    state = torch.load(results["best_ckpt"], map_location="cpu", weights_only=True)
    assert state["data_config"]["modalities"] == ["flair", "t1c"]
    # the net was built for, and trained on, the two images (and their two symmetry maps)
    assert _first_conv_inputs(state) == state["hyper_parameters"]["in_channels"] == (4 if model == "fcn_sym" else 2)
    assert state["data_config"]["symmetry"]["enabled"] is (model == "fcn_sym")
    tested = {r["case"] for r in _rows(tmp_path)}
    assert tested and results["test/dice_mean"] == pytest.approx(np.mean([results[f"test/dice_{r}"] for r in REGIONS]))


def test_symmetry_maps_without_t1_need_an_explicit_axis_modality(tmp_path: Path) -> None:
    from brats_lightning.errors import ConfigError, find_user_error

    cfg = compose(["model=fcn_sym", "data.modalities=[flair,t1c]"], output_dir=str(tmp_path))
    with pytest.raises(Exception) as info:
        train(cfg)
    err = find_user_error(info.value)
    assert isinstance(err, ConfigError) and "axis is found on t1, which data.modalities=['flair', 't1c']" in str(err)


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


def test_unlabelled_training_case_is_refused_before_training(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "data"
    for c in discover_cases(synthetic_root)[:6]:
        copy_case(c, root)
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
