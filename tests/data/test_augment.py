"""On-device slice augmentation: known shapes moved by known transforms, image and label together."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from brats_lightning.data.augment import SliceAugment


def _params(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_known_transforms_move_a_known_shape() -> None:
    x = torch.randn(3, 2, 12, 12)
    y = torch.randint(0, 4, (3, 12, 12))
    xa, ya = SliceAugment.apply(x, y, _params((1, 0, 1), (0, 90, 1), (0, 0, 1)))
    # left-right flip = reversing axis X (-2), for the image and the label alike
    torch.testing.assert_close(xa[0], x[0].flip(-2), atol=1e-5, rtol=0)
    assert torch.equal(ya[0], y[0].flip(-2))
    # a quarter turn is a rot90 of both
    torch.testing.assert_close(xa[1], torch.rot90(x[1], 1, (-2, -1)), atol=1e-5, rtol=0)
    assert torch.equal(ya[1], torch.rot90(y[1], 1, (-2, -1)))
    # the identity leaves everything alone
    torch.testing.assert_close(xa[2], x[2], atol=1e-5, rtol=0)
    assert torch.equal(ya[2], y[2])


def test_scaling_zooms_about_the_centre() -> None:
    y = torch.zeros(1, 32, 32, dtype=torch.long)
    y[0, 12:20, 12:20] = 1  # an 8x8 square in the centre
    x = y[:, None].float()
    xa, ya = SliceAugment.apply(x, y, _params((0, 0, 2.0)))
    rows, cols = torch.nonzero(ya[0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 23, 8, 23)  # 16x16, same centre
    assert torch.equal((xa[0, 0] > 0.5).long(), ya[0])


def test_random_transforms_keep_image_label_and_every_channel_aligned() -> None:
    h, w = 48, 64
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = (((yy - 18) / 9.0) ** 2 + ((xx - 40) / 13.0) ** 2 < 1).long()  # an off-centre ellipse
    y = blob.repeat(16, 1, 1)
    # channel 0: the label as intensity; channel 1: the same (a "symmetry map" moves with it)
    x = torch.stack([y.float(), y.float()], dim=1)
    aug = SliceAugment(rotate_deg=30, scale=0.2, prob=1.0, flip_prob=0.5)
    xa, ya = aug(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(xa[:, 0], xa[:, 1])
    moved = 0
    for k in range(16):
        image_mask = xa[k, 0] > 0.5
        label_mask = ya[k].bool()
        iou = (image_mask & label_mask).sum() / (image_mask | label_mask).sum()
        assert float(iou) > 0.9, k
        moved += int(not torch.equal(ya[k], y[k]))
    assert moved >= 14  # they did move
    # the same generator seed gives the same batch
    xb, yb = aug(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_parameters_stay_in_range() -> None:
    aug = SliceAugment(rotate_deg=10, scale=0.1, prob=0.5, flip_prob=0.5)
    p = aug.random_params(4000, torch.Generator().manual_seed(0))
    assert set(p[:, 0].tolist()) == {0.0, 1.0} and abs(float(p[:, 0].mean()) - 0.5) < 0.05
    assert float(p[:, 1].abs().max()) <= 10 and 0.9 <= float(p[:, 2].min()) and float(p[:, 2].max()) <= 1.1
    assert abs(float((p[:, 1] != 0).float().mean()) - 0.5) < 0.05
    assert not math.isnan(float(p.sum()))


def test_intensity_augmentation_changes_only_the_mr_channels_inside_the_brain() -> None:
    from brats_lightning.data.augment import SliceAugment

    x = torch.randn(16, 8, 40, 48)
    x[:, :, :6] = 0  # background rows
    y = torch.randint(0, 4, (16, 40, 48))
    plain = SliceAugment(prob=0.0, flip_prob=0.0)
    strong = SliceAugment(prob=0.0, flip_prob=0.0, intensity=True, strength=2.0)
    xa, ya = strong(x, y, torch.Generator().manual_seed(0), intensity_channels=[0, 1, 2, 3])
    xp, _ = plain(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(ya, y) and torch.equal(xa[:, 4:], xp[:, 4:])  # symmetry maps, labels untouched
    assert torch.equal(xa[:, :, :6], torch.zeros_like(xa[:, :, :6]))  # the background stays zero
    changed = (xa[:, :4] - xp[:, :4]).abs().flatten(1).amax(1) > 1e-3
    assert 4 <= int(changed.sum()) < 16  # drawn per slice
    xb, _ = strong(x, y, torch.Generator().manual_seed(0), intensity_channels=[0, 1, 2, 3])
    assert torch.equal(xa, xb)


def test_elastic_deformation_moves_image_and_label_together() -> None:
    from brats_lightning.data.augment import SliceAugment

    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    y = (((yy - 20) / 10.0) ** 2 + ((xx - 30) / 14.0) ** 2 < 1).long().repeat(8, 1, 1)
    x = y[:, None].float().repeat(1, 2, 1, 1)
    aug = SliceAugment(prob=0.0, flip_prob=0.0, elastic_prob=1.0, elastic_alpha=4.0)
    xa, ya = aug(x, y, torch.Generator().manual_seed(1))
    for k in range(8):
        inter = ((xa[k, 0] > 0.5) & ya[k].bool()).sum()
        assert float(inter / ((xa[k, 0] > 0.5) | ya[k].bool()).sum()) > 0.9
    assert sum(not torch.equal(ya[k], y[k]) for k in range(8)) >= 6
    with pytest.raises(ValueError, match="elastic_prob must be in"):
        SliceAugment(elastic_prob=1.5)


def test_modality_dropout_zeroes_whole_modalities_and_never_all(tiny_dm_kwargs: dict) -> None:
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(**tiny_dm_kwargs, symmetry=True, modality_dropout=0.4)
    x = torch.randn(2000, 8, 4, 4)
    out = dm.drop_modalities(x, torch.Generator().manual_seed(0))
    zero = (out == 0).flatten(2).all(2)  # (N, channels)
    images, maps = zero[:, :4], zero[:, 4:]
    assert torch.equal(images, maps)  # a modality goes with its symmetry map
    assert not images.all(1).any()  # one is always kept
    assert abs(float(images.float().mean()) - 0.4) < 0.04
    kept = ~zero
    assert torch.equal(out[kept.view(2000, 8, 1, 1).expand_as(x)], x[kept.view(2000, 8, 1, 1).expand_as(x)])
    with pytest.raises(Exception, match=r"data.modality_dropout: Input should be less than 1 \(got 1.0\)"):
        BratsDataModule(**tiny_dm_kwargs, modality_dropout=1.0)


def test_modality_dropout_is_trained_whenever_it_is_set_also_without_augmentation(
    tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer
) -> None:
    """data.modality_dropout is recorded in the checkpoint and lets predict accept cases that lack sequences: it
    must be what the training slices saw, with data.augment=false too."""
    import pytorch_lightning as pl

    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    class Probe(pl.Callback):
        def __init__(self) -> None:
            self.zeroed: list[torch.Tensor] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            image = batch[0]  # after the transfer hook: what the net trains on
            inside = image.abs().flatten(2).amax(2) > 0  # (N, channels): a channel with anything in it
            brain = inside.any(1)
            self.zeroed.append((~inside[brain]).float().mean(0))

    dm = BratsDataModule(**{**tiny_dm_kwargs, "augment": False, "modality_dropout": 0.6})
    probe = Probe()
    trainer = tiny_trainer(tmp_path, 1, [probe], limit_train_batches=6, limit_val_batches=0)
    trainer.fit(FCNModule(4, 4, width=0.25, test_hd95=False), datamodule=dm)
    zeroed = torch.stack(probe.zeroed).mean(0)  # share of brain slices with each modality zeroed
    assert float(zeroed.min()) > 0.2  # every modality was dropped from a good share of the slices
