"""brats_lightning.data.datasets: training windows, tumour-centred sampling, 2.5D context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_lightning.data.datasets import SliceDataset, crop_offsets, window_holding
from brats_lightning.inference.volume import with_context


def test_training_slices_carry_the_same_context_as_inference(tiny_dm_kwargs: dict) -> None:
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.data.datasets import SliceDataset

    dm = BratsDataModule(**tiny_dm_kwargs, context_slices=1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.in_channels == 12 and dm.describe()["context_slices"] == 1
    case = dm.train_cases[0]
    ds = SliceDataset([case], case.shape[2:], batch_size=1, augment=False, context=1)
    z0 = case.brain_slices[0]
    i = case.brain_slices.index(z0)
    image = np.zeros((1, 12, *case.shape[2:]), np.float16)
    label = np.zeros((1, *case.shape[2:]), np.uint8)
    ds.fill([(0, i)], [image, label])
    expected = with_context(torch.from_numpy(np.asarray(case.image)), torch.tensor([z0]), 1)
    np.testing.assert_array_equal(image, expected.numpy())
    assert dm.intensity_channels == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert BratsDataModule(**tiny_dm_kwargs, symmetry=True, context_slices=1).intensity_channels == [
        0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19,
    ]  # fmt: skip


def test_window_holding_draws_every_valid_window_and_only_those() -> None:
    rng = np.random.default_rng(0)
    for n, s in [(10, 4), (4, 10), (7, 7), (1, 3)]:
        free = n - s
        for p in range(n):
            # brute force: offsets within the image (or the padding) whose window holds p
            valid = {o for o in range(min(0, free), max(0, free) + 1) if o <= p < o + s}
            seen = {window_holding([p], [s], [n], rng)[0] for _ in range(400)}
            assert seen == valid, (n, s, p)


@pytest.fixture(scope="module")
def train_cases(tiny_dm_kwargs: dict) -> list:
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(**tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_cases


def _draw(cases: list, fraction: float, epochs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    ds = SliceDataset(cases, (24, 24), batch_size=len(cases), augment=True, seed=0, tumour_fraction=fraction)
    images = np.zeros((len(ds), ds.channels, 24, 24), np.float16)
    labels = np.zeros((len(ds), 24, 24), np.uint8)
    out_l = []
    for epoch in range(epochs):
        ds.fill([(epoch, i) for i in range(len(ds))], [images, labels])
        out_l.append(labels.copy())
    return images, np.concatenate(out_l)


def test_tumour_sampling_puts_tumour_in_every_window_and_favours_the_small_classes(train_cases: list) -> None:
    _, natural = _draw(train_cases, 0.0)
    _, tumour = _draw(train_cases, 1.0)
    has = lambda labels, k: (labels == k).reshape(len(labels), -1).any(1).mean()  # noqa: E731
    assert has(tumour > 0, True) == 1.0  # every window holds tumour
    assert has(natural > 0, True) < 0.9  # the natural draw does not
    # classes drawn uniformly: enhancing tumour (class 3) is in far more windows than naturally
    assert has(tumour, 3) > has(natural, 3) + 0.2
    _, half = _draw(train_cases, 0.5)
    assert has(natural > 0, True) < has(half > 0, True) < 1.0


def test_without_tumour_sampling_the_windows_are_the_papers(train_cases: list) -> None:
    ds = SliceDataset(train_cases, (24, 24), batch_size=4, augment=True, seed=3, tumour_fraction=0.0)
    images = np.zeros((4, ds.channels, 24, 24), np.float16)
    labels = np.zeros((4, 24, 24), np.uint8)
    ds.fill([(2, i) for i in range(4)], [images, labels])
    for k in range(4):
        ci, z = ds.index[k]
        case = train_cases[ci]
        ox, oy = crop_offsets((24, 24), case.shape[2:], np.random.default_rng((3, 2, k)))
        expected = np.zeros((24, 24), np.uint8)
        src = np.asarray(case.label[z])
        x0, y0 = max(ox, 0), max(oy, 0)
        part = src[x0 : ox + 24, y0 : oy + 24]
        expected[x0 - ox : x0 - ox + part.shape[0], y0 - oy : y0 - oy + part.shape[1]] = part
        np.testing.assert_array_equal(labels[k], expected)
