"""brats_lightning.data.preparation: a pool of processes prepares what one process prepares; a bad case is named
and the others are prepared; a cascade's first-stage maps are computed once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_lightning.data.cache import load_prepared
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.preparation import first_stage_maps
from brats_lightning.errors import DataError
from tests.helpers import copy_cases


def test_preparing_with_a_pool_gives_the_same_cache(tmp_path, synthetic_root) -> None:
    """Two worker processes prepare what one process prepares (symmetry maps, patch index included)."""
    common = {"root": str(synthetic_root), "symmetry": True, "max_cases": 4, "num_folds": 2}
    one = BratsDataModule(cache_dir=str(tmp_path / "one"), prepare_workers=1, **common)
    two = BratsDataModule(cache_dir=str(tmp_path / "two"), prepare_workers=2, **common)
    one.prepare_data()
    two.prepare_data()
    cases = [c.case_id for c in one.discover()]
    for c in cases:
        a, b = one.prepared_dir / c, two.prepared_dir / c
        for name in ("label", "mask", "index"):
            np.testing.assert_array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy"))
        np.testing.assert_allclose(
            np.load(a / "image.npy").astype(np.float32), np.load(b / "image.npy").astype(np.float32), atol=2e-3
        )
        meta = json.loads((b / "meta.json").read_text())
        index = np.load(b / "index.npy")
        label = np.load(b / "label.npy").ravel()
        # the compact index lists the brain voxels grouped by class, class k taking label_counts[k] entries
        starts = np.concatenate([[0], np.cumsum(meta["label_counts"])])
        for k in range(len(meta["label_counts"])):
            assert np.all(label[index[starts[k] : starts[k + 1]]] == k)
        assert index.size == int(np.load(b / "mask.npy").sum())


def test_a_bad_case_is_named_and_the_others_are_prepared(tmp_path: Path, synthetic_root: Path) -> None:
    root = copy_cases(synthetic_root, tmp_path / "data", 3)
    bad = sorted(root.iterdir())[1]
    (bad / f"{bad.name}_t1.nii.gz").write_bytes(b"not a nifti file")
    dm = BratsDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), num_folds=2, prepare_workers=1)
    with pytest.raises(DataError, match=rf"1 of 3 cases could not be prepared .*\n  - .*{bad.name}_t1.nii.gz"):
        dm.prepare_data()
    prepared = sorted(p.name for p in dm.prepared_dir.iterdir() if (p / "meta.json").is_file())
    assert prepared == sorted(p.name for p in root.iterdir() if p != bad)


def test_first_stage_maps_are_computed_once_and_aligned(tmp_path: Path, tiny_dm_kwargs: dict) -> None:
    dm = BratsDataModule(**tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup("fit")
    cases = dm.train_cases[:2]
    margin, calls = 3, []

    def first_stage(x: torch.Tensor) -> torch.Tensor:  # a stand-in net: the first channel, padded by the margin
        calls.append(len(x))
        out = torch.nn.functional.pad(x[:, :1], (margin, margin, margin, margin))
        return torch.cat([1 - out.sigmoid(), out.sigmoid()], dim=1)

    paths = first_stage_maps(cases, first_stage, tmp_path / "maps", margin, batch_slices=4)
    assert paths == [tmp_path / "maps" / f"{c.case_id}.npy" for c in cases]
    for case, path in zip(cases, paths):
        maps = np.load(path)
        z, _, nx, ny = case.shape
        assert maps.shape == (z, 2, nx + 2 * margin, ny + 2 * margin) and maps.dtype == np.float16
        brain = case.brain_slices
        inner = maps[brain, 1, margin:-margin, margin:-margin].astype(np.float32)
        expected = torch.sigmoid(torch.from_numpy(np.asarray(case.image[brain, 0], dtype=np.float32))).numpy()
        np.testing.assert_allclose(inner, expected, atol=2e-3)  # float16
        others = [s for s in range(z) if s not in set(brain)]
        assert np.all(maps[others, 0] == 1)  # slices without brain: background
    n = len(calls)
    assert first_stage_maps(cases, first_stage, tmp_path / "maps", margin) == paths and len(calls) == n  # once
    assert json.loads((load_prepared(cases[0].folder).folder / "meta.json").read_text())["case_id"] == cases[0].case_id
