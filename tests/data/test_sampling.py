"""Class-balanced patch sampling: distributions, patch contents, vectorised extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.sampling import PatchSampler


@pytest.fixture(scope="module")
def dm(tiny_dm_kwargs: dict) -> BratsDataModule:
    """A patch data module shared by this module's tests, which only read it."""
    d = BratsDataModule(mode="patches", **tiny_dm_kwargs)
    d.prepare_data()
    d.setup("fit")
    return d


def test_balanced_and_natural_distributions(dm: BratsDataModule) -> None:
    s = dm.patch_sampler
    rng = np.random.default_rng(0)
    _, _, lab = s.sample(40_000, "balanced", rng)
    freq = np.bincount(lab, minlength=s.num_classes) / lab.size
    np.testing.assert_allclose(freq[s.present], 1 / s.present.size, atol=0.01)
    _, _, lab = s.sample(40_000, "natural", rng)
    freq = np.bincount(lab, minlength=s.num_classes) / lab.size
    np.testing.assert_allclose(freq, s.frequencies, atol=0.01)
    assert s.frequencies[0] > 0.8  # background dominates the brain, as in real data


def test_patches_are_centred_on_a_voxel_of_their_label(dm: BratsDataModule) -> None:
    s = dm.patch_sampler
    case, flat, lab = s.sample(300, "balanced", np.random.default_rng(1))
    patches = s.extract(case, flat)
    assert patches.shape == (300, 4, 33, 33) and patches.dtype == np.float16  # the cache's precision
    for i in range(0, 300, 7):  # compare with a direct read of the volume
        c = s.cases[case[i]]
        z, x, y = np.unravel_index(flat[i], c.mask.shape)
        assert c.label[z, x, y] == lab[i] and c.mask[z, x, y]
        np.testing.assert_array_equal(patches[i, :, 16, 16], np.asarray(c.image[z, :, x, y], np.float32))
        x0, y0 = max(x - 16, 0), max(y - 16, 0)
        window = np.asarray(c.image[z, :, x0 : x + 17, y0 : y + 17], np.float32)
        np.testing.assert_array_equal(
            patches[
                i, :, 16 - (x - x0) : 16 - (x - x0) + window.shape[1], 16 - (y - y0) : 16 - (y - y0) + window.shape[2]
            ],
            window,
        )


def test_patches_zero_outside_the_volume(dm: BratsDataModule) -> None:
    s = dm.patch_sampler
    c = s.cases[0]
    nz, nx, ny = c.mask.shape
    flat = np.array([np.ravel_multi_index((nz // 2, 0, 0), (nz, nx, ny))])
    p = s.extract(np.array([0], dtype=np.int32), flat)
    assert np.all(p[0, :, :16, :] == 0) and np.all(p[0, :, :, :16] == 0)


def test_loader_yields_batches_and_follows_the_distribution_switch(tiny_dm_kwargs: dict) -> None:
    # a data module of its own: the sizes and the distribution switch would leak into the module-wide one
    dm = BratsDataModule(mode="patches", patches_per_epoch=640, **{**tiny_dm_kwargs, "batch_size": 64})
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 10
    x, y = next(iter(loader))
    assert x.shape == (64, 4, 33, 33) and y.shape == (64,)
    # the switch reaches the next loader (Lightning rebuilds the training loader every epoch)
    dm.set_patch_distribution("natural")
    ys = np.concatenate([b[1].numpy() for b in dm.train_dataloader()])
    assert np.mean(ys == 0) > 0.7
    dm.set_patch_distribution("balanced")
    ys = np.concatenate([b[1].numpy() for b in dm.train_dataloader()])
    assert np.mean(ys == 0) < 0.4
    with pytest.raises(ValueError, match="unknown patch distribution"):
        dm.set_patch_distribution("uniform")


def test_bad_patch_size(dm: BratsDataModule) -> None:
    with pytest.raises(ValueError, match="positive"):
        PatchSampler(dm.train_cases, 4, 0)


def test_even_patches_have_one_more_pixel_before_the_centre(dm: BratsDataModule) -> None:
    odd, even = PatchSampler(dm.train_cases, 4, 33), PatchSampler(dm.train_cases, 4, 56)
    case, flat, _ = odd.sample(50, "balanced", np.random.default_rng(3))
    a, b = odd.extract(case, flat), even.extract(case, flat)
    assert b.shape[-2:] == (56, 56)
    # voxel p is at index 16 of a 33 patch and at index 28 of a 56 patch (covering p-28 .. p+27)
    np.testing.assert_array_equal(b[:, :, 28 - 16 : 28 + 17, 28 - 16 : 28 + 17], a)


def test_aux_windows_are_aligned_with_the_patches(dm: BratsDataModule, tmp_path) -> None:
    s = PatchSampler(dm.train_cases, 4, 33)
    margin = 16
    # an auxiliary map that stores the voxel coordinates, so alignment can be read off (memory-mapped files)
    maps = []
    for i, c in enumerate(s.cases):
        z, _, nx, ny = c.image.shape
        zz, xx, yy = np.meshgrid(
            np.arange(z), np.arange(-margin, nx + margin), np.arange(-margin, ny + margin), indexing="ij"
        )
        np.save(tmp_path / f"{i}.npy", np.stack([zz, xx, yy], axis=1).astype(np.float32))
        maps.append(tmp_path / f"{i}.npy")
    s.set_aux(maps, margin=margin, size=24, before=12)
    x, aux, y = s.batch(40, "balanced", np.random.default_rng(4))
    assert x.shape == (40, 4, 33, 33) and aux.shape == (40, 3, 24, 24) and y.shape == (40,)
    case, flat, _ = s.sample(40, "balanced", np.random.default_rng(4))
    for k in range(40):
        z, cx, cy = np.unravel_index(flat[k], s.cases[case[k]].mask.shape)
        assert (aux[k, 0] == z).all()
        np.testing.assert_array_equal(aux[k, 1, :, 0], np.arange(cx - 12, cx + 12))
        np.testing.assert_array_equal(aux[k, 2, 0, :], np.arange(cy - 12, cy + 12))
    with pytest.raises(ValueError, match="auxiliary maps for"):
        s.set_aux(maps[:1], margin=margin, size=24, before=12)


# -- dense training ----------------------------------------------------------------------------------


def test_dense_weights_keep_the_class_balance_inside_every_window() -> None:
    from brats_lightning.data.sampling import dense_weights

    labels = np.array([[[0, 0, 0], [0, 3, 3], [-1, -1, 1]], [[0, 0, 0], [0, 0, 0], [0, 0, -1]]])
    w = dense_weights(labels, 4, "balanced")
    np.testing.assert_allclose(w.reshape(2, -1).sum(1), [1.0, 1.0], rtol=1e-6)
    for k in (0, 1, 3):  # three classes present in window 0: a third of the weight each
        assert w[0][labels[0] == k].sum() == pytest.approx(1 / 3)
    assert (w[labels == -1] == 0).all()
    natural = dense_weights(labels, 4, "natural")
    assert np.allclose(natural[0][labels[0] >= 0], 1 / 7) and np.allclose(natural[1][labels[1] >= 0], 1 / 8)


def test_a_dense_window_labels_its_centre_pixels_as_their_own_patches_would(dm: BratsDataModule) -> None:
    """The D x D output of a window = the outputs of the D x D patches of 33x33 centred on those pixels,
    and its labels are those pixels' labels (-1 outside the brain)."""
    import torch

    from brats_lightning.nets.twopath import TwoPathCNN

    d = 5
    dense = PatchSampler(dm.train_cases, dm.num_classes, 33, dense_size=d)
    case, flat, _ = dense.sample(6, "balanced", np.random.default_rng(3))
    windows = dense.extract(case, flat)
    labels = dense.extract_labels(case, flat)
    assert windows.shape == (6, 4, 37, 37) and labels.shape == (6, d, d)
    torch.manual_seed(0)
    net = TwoPathCNN(4, 4).eval()
    with torch.no_grad():
        out = net(torch.from_numpy(windows).float())
    assert out.shape == (6, 4, d, d)
    single = PatchSampler(dm.train_cases, dm.num_classes, 33)
    for k in range(6):
        c = dense.cases[case[k]]
        z, x, y = np.unravel_index(flat[k], c.mask.shape)
        for i, j in ((0, 0), (2, 2), (4, 1), (1, 4)):
            px, py = x - d // 2 + i, y - d // 2 + j
            if not (0 <= px < c.mask.shape[1] and 0 <= py < c.mask.shape[2]):
                continue
            f = np.ravel_multi_index((z, px, py), c.mask.shape)
            patch = single.extract(np.array([case[k]]), np.array([f]))
            with torch.no_grad():
                ref = net(torch.from_numpy(patch).float())[0, :, 0, 0]
            torch.testing.assert_close(out[k, :, i, j], ref, rtol=1e-4, atol=1e-5)
            expected = int(c.label[z, px, py]) if c.mask[z, px, py] else -1
            assert labels[k, i, j] == expected


def test_dense_training_runs_and_learns(tiny_dm_kwargs: dict, tiny_trainer, tmp_path) -> None:
    import torch

    from brats_lightning.modules.patch import PatchCNNModule

    dm = BratsDataModule(mode="patches", **{**tiny_dm_kwargs, "batch_size": 4}, dense_size=9, patches_per_epoch=64)
    torch.manual_seed(0)
    model = PatchCNNModule("twopath", 4, 4, test_hd95=False)
    trainer = tiny_trainer(tmp_path, 3, limit_val_batches=0, precision="32")
    trainer.fit(model, datamodule=dm)
    losses = trainer.callback_metrics
    assert torch.isfinite(losses["train/nll"]) and float(losses["train/nll"]) < np.log(4)  # below chance


def test_patch_batches_are_reproducible_and_differ_by_index(tiny_dm_kwargs: dict) -> None:
    """Batch i of epoch e is a function of (seed, e, i): what a rank draws does not depend on workers or history."""
    dm = BratsDataModule(mode="patches", **{**tiny_dm_kwargs, "batch_size": 16})
    dm.prepare_data()
    dm.setup("fit")
    a, b = dm.train_dataset(), dm.train_dataset()
    x0, y0 = a[(0, 5, "balanced")]
    x1, y1 = b[(0, 5, "balanced")]
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(a[(0, 6, "balanced")][0], x0)  # another index (rank): other patches
    assert not torch.equal(a[(1, 5, "balanced")][0], x0)  # another epoch: other patches
    # a loader with 2 workers gives what the dataset gives, in order
    dm.num_workers = 2
    loader = dm.train_dataloader()
    first = next(iter(loader))
    ref = dm.train_dataset()[(0, 0, "balanced")]
    assert all(torch.equal(u, v) for u, v in zip(first, ref))
    assert np.isclose(float(first[0].float().abs().sum()), float(ref[0].float().abs().sum()))
