"""Symmetry maps (Shen et al. Sec. 2.2) against a per-pixel reference and on known geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brats_lightning.data.symmetry import (
    SymmetryAxis,
    _rotate,
    estimate_axis,
    gaussian_smooth,
    symmetry_difference,
    symmetry_maps,
    volume_symmetry_maps,
)
from tests.data.symmetry_reference import reference_difference


def _symmetric_image(h: int = 64, w: int = 56, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image symmetric about row (h-1)/2, inside an elliptic 'brain' mask."""
    g = torch.Generator().manual_seed(seed)
    base = gaussian_smooth(torch.rand(1, 1, h, w, generator=g), 9, 2.5)[0, 0]
    base = (base + base.flip(0)) / 2
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    mask = ((yy - (h - 1) / 2) / (0.42 * h)) ** 2 + ((xx - (w - 1) / 2) / (0.42 * w)) ** 2 < 1
    return base * mask * 4.0, mask


@pytest.mark.parametrize("k", [23, 24, 30, 17])
@pytest.mark.parametrize("seed", [0, 1])
def test_difference_matches_per_pixel_loop_on_random_images(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3, 24, 20)).astype(np.float32)
    mask = rng.random((2, 24, 20)) > 0.2
    ref = reference_difference(x, mask, k)
    got = symmetry_difference(torch.from_numpy(x), torch.from_numpy(mask), SymmetryAxis(0.0, k / 2, 9.5))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    # The loop must not be trivially zero: most pixels differ from their mirror.
    assert np.mean(np.abs(ref) > 1e-3) > 0.3


def test_difference_chunking_and_no_mask_agree() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(5, 2, 18, 16)).astype(np.float32))
    axis = SymmetryAxis(0.0, 8.5, 7.5)
    a = symmetry_difference(x, None, axis, chunk=1)
    b = symmetry_difference(x, None, axis, chunk=5)
    torch.testing.assert_close(a, b)
    np.testing.assert_allclose(a.numpy(), reference_difference(x.numpy(), None, 17), rtol=1e-5, atol=1e-6)


def test_symmetric_image_gives_neutral_map_and_lesion_stands_out() -> None:
    img, mask = _symmetric_image()
    x = img[None, None].repeat(1, 4, 1, 1)
    lesion = torch.zeros_like(img, dtype=torch.bool)
    lesion[8:24, 16:32] = True  # 16x16, one side only (rows < 31.5)
    x[:, 0][0][lesion] += 3.0  # bright on "FLAIR"
    maps = symmetry_maps(x, mask[None], ref_channel=1)
    assert maps.shape == x.shape
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    # Healthy channels: symmetric -> 0.5 everywhere (up to smoothing of the exact mirror).
    assert float((maps[0, 1:] - 0.5).abs().max()) < 1e-3
    # The lesion is bright on its side. At its mirror position the 11x11 search finds healthy
    # pixels beyond the lesion's edge except in its middle (lesion wider than the window): dark there.
    assert float(maps[0, 0][10:22, 18:30].min()) > 0.75
    assert float(maps[0, 0][63 - 18 : 63 - 13, 22:26].max()) < 0.25
    assert float((maps[0, 0][63 - 23 : 63 - 8, 16:32] - 0.5).abs().min()) < 0.05  # rim of the mirror: matched
    assert float((maps[0, 0][:, 45:] - 0.5).abs().max()) < 1e-3
    assert torch.all(maps[0, :, ~mask] == 0.5)


@pytest.mark.parametrize("angle", [0.0, 7.0, -11.0])
def test_estimate_axis_recovers_known_tilted_axis(angle: float) -> None:
    img, mask = _symmetric_image(80, 72, seed=2)
    ch, cw = 39.5, 35.5
    tilted = _rotate(img[None, None], angle, ch, cw, inverse=True)[0, 0]
    tmask = _rotate(mask[None, None].float(), angle, ch, cw, inverse=True, mode="nearest")[0, 0] > 0.5
    axis = estimate_axis(tilted[None], tmask[None])
    assert abs(axis.angle - angle) <= 0.3
    # the estimated point lies on the true axis (distance to the line, in pixels)
    t = math.radians(angle)
    dist = abs((axis.center_h - ch) * math.cos(t) - (axis.center_w - cw) * math.sin(t))
    assert dist < 0.75
    assert (2 * axis.center_h) == int(2 * axis.center_h)


def test_tilted_axis_maps_flag_only_the_lesion() -> None:
    img, mask = _symmetric_image(80, 72, seed=4)
    angle, ch, cw = 9.0, 39.5, 35.5
    x = img[None].repeat(2, 1, 1)
    x[0, 20:28, 30:38] += 3.0
    tilted = _rotate(x[None], angle, ch, cw, inverse=True)[0]
    tmask = _rotate(mask[None, None].float(), angle, ch, cw, inverse=True, mode="nearest")[0, 0] > 0.5
    maps = symmetry_maps(tilted[None], tmask[None], ref_channel=1)[0]
    lesion = (
        _rotate(
            torch.zeros_like(img).index_put_((torch.arange(20, 28)[:, None], torch.arange(30, 38)), torch.tensor(1.0))[
                None, None
            ],
            angle,
            ch,
            cw,
            inverse=True,
        )[0, 0]
        > 0.5
    )
    inner = tmask & (_rotate(mask[None, None].float(), angle, ch, cw, inverse=True)[0, 0] > 0.99)
    assert float(maps[0][lesion].mean()) > 0.8
    # Away from the lesion and its mirror, the tilted symmetric anatomy stays near neutral,
    # which it would not if the tilt were ignored.
    far = inner.clone()
    far[:, :48] = False
    assert float((maps[1][inner] - 0.5).abs().mean()) < 0.02
    untilted = symmetry_maps(tilted[None], tmask[None], ref_channel=1, axis=SymmetryAxis(0.0, ch, cw))[0]
    assert float((untilted[1][inner] - 0.5).abs().mean()) > 2 * float((maps[1][inner] - 0.5).abs().mean())


def test_volume_layout_round_trip() -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 20, 18, 6)).astype(np.float32)
    out = volume_symmetry_maps(vol)
    assert out.shape == vol.shape
    direct = symmetry_maps(torch.from_numpy(vol).permute(3, 0, 1, 2)).permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(out, direct)


def test_bad_input_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        symmetry_maps(torch.zeros(4, 8, 8))


@pytest.mark.parametrize("angle", [0.0, 6.0])
def test_working_on_the_brain_box_changes_nothing(angle: float) -> None:
    """symmetry_maps crops to the brain's box internally; compare with the uncropped pipeline."""
    img, mask = _symmetric_image(72, 64, seed=5)
    canvas = torch.zeros(3, 2, 110, 90)
    canvas[1:, :, 20:92, 14:78] = img
    canvas[1, 0, 30:40, 30:38] += 2.0
    m = torch.zeros(3, 110, 90, dtype=torch.bool)
    m[1:, 20:92, 14:78] = mask
    axis = SymmetryAxis(angle, 55.5, 45.5)
    got = symmetry_maps(canvas, m, axis=axis)
    from brats_lightning.data.symmetry import straighten

    xt, mt = straighten(gaussian_smooth(canvas), m, axis)
    d = symmetry_difference(xt, mt, axis)
    if angle:
        d = _rotate(d, angle, axis.center_h, axis.center_w, inverse=True)
    want = torch.where(m[:, None], torch.sigmoid(d), 0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert float((got[1, 0] - 0.5).abs().max()) > 0.2  # the lesion is there
