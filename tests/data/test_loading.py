"""brats_lightning.data.loading: loader workers that reuse shared buffers give the batches the data set gives, and
the number of workers follows the hardware."""

from __future__ import annotations

import pytest
import torch

from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.loading import RingLoader, resolve_workers
from brats_lightning.data.preparation import available_cores
from brats_lightning.errors import ConfigError


def test_two_workers_with_shared_buffers_give_the_data_set_s_batches_in_order(tiny_dm_kwargs: dict) -> None:
    dm = BratsDataModule(**{**tiny_dm_kwargs, "augment": False})
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.train_dataset()
    batches = [[(0, 3 * b + i) for i in range(3)] for b in range(8)]  # more batches than buffers per worker
    expected = [ds[items] for items in batches]  # in this process: plain tensors
    loader = RingLoader(ds, batch_size=None, sampler=batches, num_workers=2)
    for _ in range(2):  # a second pass reuses the buffers the first one gave back
        got = list(loader)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert ds.ring is not None and ds.ring.workers == 2
    # what a consumer keeps is its own: a later batch does not change it
    kept = next(iter(loader))[0].clone()
    first = next(iter(loader))[0]
    assert torch.equal(first, kept)


def test_the_number_of_workers_follows_the_hardware() -> None:
    cores = available_cores()
    assert resolve_workers("auto", 1, "cpu") == cores // 4  # the CPU's training process needs the cores
    assert resolve_workers("auto", 1, "gpu") == min(8, max(1, cores - 1))
    assert resolve_workers("auto", cores, "gpu") == 1  # one rank per core: each keeps one worker
    assert resolve_workers(3) == 3
    for bad in (-1, 1.5, True, "many"):
        with pytest.raises(ConfigError, match=r"data.num_workers must be auto or an integer >= 0"):
            resolve_workers(bad)  # type: ignore[arg-type]
