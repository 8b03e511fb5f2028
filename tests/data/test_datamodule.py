"""The data module on tiny synthetic data: cache, splits, loaders, symmetry channels."""

from __future__ import annotations

import json
import os

import pytest
import torch

from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.errors import ConfigError


def test_prepare_setup_and_loaders(tiny_dm_kwargs: dict) -> None:
    dm = BratsDataModule(symmetry=True, **tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_cases) + len(dm.val_cases) + len(dm.test_cases) == 8
    assert not set(c.case_id for c in dm.train_cases) & set(c.case_id for c in dm.val_cases + dm.test_cases)
    x, y = next(iter(dm.train_dataloader()))
    # the loader delivers the cache's compact types; the transfer hook converts them on the device
    assert x.dtype == torch.float16 and y.dtype == torch.uint8
    x, y = dm.on_after_batch_transfer((x, y), 0)
    assert x.shape == (4, 8, 48, 56) and x.dtype == torch.float32
    assert y.shape == (4, 48, 56) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3}
    # symmetry channels are stored centred: map - 0.5 in [-0.5, 0.5]
    assert float(x[:, 4:].abs().max()) <= 0.5 + 1e-3
    vol = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert vol["image"].dtype == torch.float32 and vol["label"].dtype == torch.int64
    z, c, h, w = vol["image"].shape
    assert c == 8 and vol["label"].shape == (z, h, w) and vol["mask"].shape == (z, h, w)
    # the crop box lies inside the RAS grid
    for (a, b), n in zip(vol["box"], vol["ras_shape"]):
        assert 0 <= a < b <= n


def test_second_run_does_no_work_and_split_is_reread(tiny_dm_kwargs: dict) -> None:
    dm = BratsDataModule(**tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup()
    folder = dm.prepared_dir / dm.train_cases[0].case_id
    stamp = os.stat(folder / "image.npy").st_mtime_ns
    dm2 = BratsDataModule(**tiny_dm_kwargs)
    dm2.prepare_data()
    dm2.setup()
    assert os.stat(folder / "image.npy").st_mtime_ns == stamp
    assert [c.case_id for c in dm2.test_cases] == [c.case_id for c in dm.test_cases]
    split_file = dm._split_path([c.case_id for c in dm.discover()])
    saved = json.loads(split_file.read_text())
    assert saved["test"] == [c.case_id for c in dm.test_cases]


def test_folds_partition_the_non_test_cases(tiny_dm_kwargs: dict) -> None:
    vals, tests = [], set()
    for fold in range(3):
        dm = BratsDataModule(num_folds=3, fold=fold, **tiny_dm_kwargs)
        dm.prepare_data()
        dm.setup()
        vals += [c.case_id for c in dm.val_cases]
        tests |= {c.case_id for c in dm.test_cases}
        assert len(dm.train_cases) + len(dm.val_cases) == 8 - len(dm.test_cases)
    assert len(vals) == len(set(vals)) == 8 - len(tests)
    # data.fold=-1: every fold's case trains, none validates
    dm = BratsDataModule(num_folds=3, fold=-1, **tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup()
    assert sorted(c.case_id for c in dm.train_cases) == sorted(vals) and dm.val_cases == []
    dm = BratsDataModule(num_folds=3, fold=-1, test_fraction=0.0, **tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_cases) == 8 and not dm.val_cases and not dm.test_cases
    with pytest.raises(ConfigError, match="there is no case to test on"):
        dm.test_dataloader()


def test_symmetry_off_and_on_use_separate_caches(tiny_dm_kwargs: dict) -> None:
    a = BratsDataModule(symmetry=False, **tiny_dm_kwargs)
    b = BratsDataModule(symmetry=True, **tiny_dm_kwargs)
    assert a.prepared_dir != b.prepared_dir
    assert (a.in_channels, b.in_channels) == (4, 8)


def test_inconsistent_channels_are_rejected(tiny_dm_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="in_channels=4 but 4 modalities with symmetry maps give 8"):
        BratsDataModule(symmetry=True, in_channels=4, **tiny_dm_kwargs)
    with pytest.raises(ValueError, match="num_classes=5"):
        BratsDataModule(num_classes=5, **tiny_dm_kwargs)


def test_prepared_and_split_folders_say_what_produced_them(tmp_path, synthetic_root) -> None:
    """``config.json`` at the root of the prepared folder and of the split folder, with the options in force."""
    from brats_lightning.data.cache import cache_key
    from brats_lightning.data.provenance import package_version

    kwargs = {
        "root": str(synthetic_root),
        "cache_dir": str(tmp_path),
        "modalities": ("t1", "t2", "flair"),
        "symmetry": True,
        "symmetry_options": {"window": 9, "device": "cpu"},
        "preprocess": {"clip_percentiles": [0.5, 99.5], "margin": 3},
        "max_cases": 5,
        "seed": 7,
        "test_fraction": 0.4,
        "num_folds": 3,
        "crop_size": (48, 56),
    }
    dm = BratsDataModule(**kwargs)
    dm.prepare_data()
    dm.setup()
    conf = json.loads((dm.prepared_dir / "config.json").read_text())
    assert conf["preprocess"]["clip_percentiles"] == [0.5, 99.5] and conf["preprocess"]["margin"] == 3
    assert conf["modalities"] == ["t1", "t2", "flair"] and conf["convention"] == "brats2017"
    assert conf["symmetry"]["enabled"] is True and conf["symmetry"]["window"] == 9
    assert "device" not in conf["symmetry"]  # where the maps are computed does not change them
    assert conf["root"] == str(synthetic_root.resolve()) and conf["cache_version"] >= 1
    assert conf["package_version"] == package_version() != "unknown"
    assert dm.prepared_dir.name.endswith("-" + conf["key"])
    args = (conf["root"], conf["layout"], conf["modalities"], conf["convention"], dm.prep, dm.symmetry)
    assert cache_key(*args) == conf["key"]
    assert not list(dm.prepared_dir.glob("*/config.json"))  # one file at the root, none per case

    split_file = dm._split_path([c.case_id for c in dm.discover()])
    assert split_file.name == "split.json"
    split_conf = json.loads((split_file.parent / "config.json").read_text())
    assert (split_conf["seed"], split_conf["test_fraction"], split_conf["num_folds"]) == (7, 0.4, 3)
    assert split_conf["n_cases"] == 5 and split_conf["dataset"] == synthetic_root.name
    saved = json.loads(split_file.read_text())
    assert len(saved["test"]) == 2 and len(saved["folds"]) == 3

    # the cases stay fresh with the file beside them: a second run prepares nothing, rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in (dm.prepared_dir / "config.json", split_file.parent / "config.json")}
    image = next(dm.prepared_dir.glob("*/image.npy"))
    stamps[image] = image.stat().st_mtime_ns
    dm2 = BratsDataModule(**kwargs)
    dm2.prepare_data()
    dm2.setup()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert [c.case_id for c in dm2.test_cases] == [c.case_id for c in dm.test_cases]


def test_excluded_cases_are_in_no_split_and_an_unknown_id_is_named(cache_dir, synthetic_root) -> None:
    """``data.exclude`` (CONTRIBUTING's "Add a data option" recipe): the cases named are gone before the split,
    the others all there; a name the data set lacks (a typo) is an error naming it, not a silent no-op."""
    from brats_lightning.errors import DataError

    kwargs = {"root": str(synthetic_root), "cache_dir": str(cache_dir), "crop_size": (48, 56), "num_folds": 2}
    every = [c.case_id for c in BratsDataModule(**kwargs).discover()]
    gone = every[1::3]
    dm = BratsDataModule(exclude=gone, **kwargs)
    assert [c.case_id for c in dm.discover()] == [c for c in every if c not in gone]
    dm.prepare_data()
    dm.setup()
    kept = [c.case_id for c in dm.train_cases + dm.val_cases + dm.test_cases]
    assert sorted(kept) == sorted(set(every) - set(gone))
    with pytest.raises(DataError, match=r"data.exclude names 1 case\(s\) that .* lacks: case_typo"):
        BratsDataModule(exclude=[every[0], "case_typo"], **kwargs).discover()
    with pytest.raises(ConfigError, match="data.exclude"):
        BratsDataModule(exclude="case_000", **kwargs)
