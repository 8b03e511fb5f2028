"""brats_lightning.data.cache: the prepared cache heals itself (truncated, empty or changed arrays)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brats_lightning.data import cache
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.errors import DataError
from tests.helpers import copy_cases


@pytest.fixture()
def prepared(tmp_path: Path, synthetic_root: Path) -> tuple[BratsDataModule, dict]:
    """A data module over 5 copied synthetic cases, prepared into a cache of this test's own."""
    root = copy_cases(synthetic_root, tmp_path / "data", 5)
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


def test_an_array_record_without_its_checksum_is_an_error_and_is_rebuilt(prepared: tuple) -> None:
    """A meta.json that records an array without its xxh3 checksum cannot vouch for it: reading the array
    is an error naming the file, and the next run prepares the case again."""
    dm, kwargs = prepared
    dm.setup("fit")
    case = dm.train_cases[0]
    meta_file = case.folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["arrays"]["image"]["xxh3"]
    meta_file.write_text(json.dumps(meta))
    _fresh_process()
    stale = cache.PreparedCase(case.case_id, case.folder, meta)
    with pytest.raises(DataError, match=rf"{meta_file}: records no checksum of image.npy"):
        _ = stale.image
    assert not meta_file.exists()  # marked stale
    meta_file.write_text(json.dumps(meta))  # (as a copy of the record would leave it)
    cases = {c.case_id: c for c in dm.discover()}
    assert not cache.is_fresh(case.folder, cases[case.case_id])  # so prepare_data rebuilds it
    _fresh_process()
    again = BratsDataModule(test_fraction=0.2, **kwargs)
    again.prepare_data()
    assert "xxh3" in json.loads(meta_file.read_text())["arrays"]["image"]
    with pytest.raises(DataError, match=r"arrays"):
        meta["arrays"] = {"image": {"bytes": 1}}
        meta_file.write_text(json.dumps(meta))
        cache.load_prepared(case.folder)


def test_a_record_describing_another_case_is_rebuilt_not_refused(prepared: tuple) -> None:
    """Before: a meta.json naming another case (its sources unchanged) passed as fresh, then loading it refused the
    run ("describes case ..."). The cache is derived data: the case is prepared again."""
    dm, kwargs = prepared
    folders = sorted(p for p in dm.prepared_dir.iterdir() if p.is_dir())
    meta_file = folders[0] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["case_id"] = folders[1].name
    meta_file.write_text(json.dumps(meta))
    _fresh_process()
    again = BratsDataModule(test_fraction=0.2, **kwargs)
    again.prepare_data()
    again.setup("fit")
    assert json.loads(meta_file.read_text())["case_id"] == folders[0].name
    assert folders[0].name in {c.case_id for c in [*again.train_cases, *again.val_cases, *again.test_cases]}


def test_a_killed_preparation_leaves_no_case_folder_behind(prepared: tuple) -> None:
    """A preparation killed while writing a case leaves its temporary folder (before: ``.<case>.tmp-<uuid>``, kept
    for ever, 28 MB for a BraTS case); the next run removes it (named by host and process: its writer is dead)."""
    import os
    import subprocess

    from brats_lightning.files import temporary_name

    dm, kwargs = prepared
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = next(p for p in dm.prepared_dir.iterdir() if p.is_dir())
    mine = temporary_name(folder)
    left = mine.with_name(mine.name.replace(f"-{os.getpid()}.", f"-{dead.pid}."))
    left.mkdir()
    (left / "image.npy").write_bytes(b"\0" * 1000)
    running = temporary_name(dm.prepared_dir / "other")  # this process's: a writer at work, left alone
    running.mkdir()
    _fresh_process()
    BratsDataModule(test_fraction=0.2, **kwargs).prepare_data()
    assert not left.exists() and running.is_dir()
