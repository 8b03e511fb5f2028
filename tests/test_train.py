"""End-to-end: compose the real config, shrink it, train and test with a real Lightning Trainer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from brats_lightning.config import compose
from brats_lightning.train import train


def _overrides(cache_dir: Path, *extra: str) -> list[str]:
    return [
        "debug=default",
        f"paths.cache_dir={cache_dir}",
        "trainer.limit_train_batches=3",
        *extra,
    ]


@pytest.mark.parametrize("model", ["fcn_sym", "fcn4"])
def test_train_writes_checkpoint_metrics_and_per_case_csv(tmp_path: Path, cache_dir: Path, model: str) -> None:
    cfg = compose(_overrides(cache_dir, f"model={model}", "model.width=0.25"), output_dir=str(tmp_path))
    results = train(cfg)
    for key in ("test/dice_wt", "test/dice_tc", "test/dice_et", "test/dice_mean"):
        assert 0.0 <= results[key] <= 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/dice_wt"] == pytest.approx(results["test/dice_wt"])
    rows = list(csv.DictReader((tmp_path / "per_case.csv").open()))
    assert {r["region"] for r in rows} == {"wt", "tc", "et"}
    assert len(rows) == 3 * len({r["case"] for r in rows}) and len(rows) >= 3
    assert set(rows[0]) >= {"case", "region", "dice", "sensitivity", "specificity", "ppv"}
    mean_wt = sum(float(r["dice"]) for r in rows if r["region"] == "wt") / (len(rows) / 3)
    assert mean_wt == pytest.approx(saved["test/dice_wt"], abs=1e-5)
    ckpts = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts) and len(ckpts) >= 2
    # checkpoints hold no pickled objects: they load with weights_only=True
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["in_channels"] == cfg.data.in_channels
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_every_model_config_composes_with_consistent_channels(tmp_path: Path) -> None:
    for model, channels, blocks in [("fcn", 4, 3), ("fcn_sym", 8, 3), ("fcn4", 4, 4), ("fcn4_sym", 8, 4)]:
        cfg = compose([f"model={model}"], output_dir=str(tmp_path))
        assert cfg.model.in_channels == channels == cfg.data.in_channels
        assert cfg.model.n_blocks == blocks
        assert cfg.model.num_classes == 4


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
    assert 0.0 <= results["test/dice_wt"] <= 1.0
    state = torch.load(results["best_ckpt"], map_location="cpu", weights_only=True)
    assert state["data_config"]["modalities"] == ["flair", "t1c"]


def test_symmetry_maps_without_t1_need_an_explicit_axis_modality(tmp_path: Path) -> None:
    from brats_lightning.errors import ConfigError, find_user_error

    cfg = compose(["model=fcn_sym", "data.modalities=[flair,t1c]"], output_dir=str(tmp_path))
    with pytest.raises(Exception) as info:
        train(cfg)
    err = find_user_error(info.value)
    assert isinstance(err, ConfigError) and "axis is found on t1, which data.modalities=['flair', 't1c']" in str(err)
