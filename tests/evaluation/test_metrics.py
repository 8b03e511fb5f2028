"""brats_lightning.evaluation.metrics: Dice, sensitivity, specificity, PPV and HD95 against references computed
another way.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from scipy.spatial.distance import cdist

from brats_lightning.evaluation import metrics as M


def _random_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    m = rng.random(shape) < p
    if not m.any():
        m[tuple(rng.integers(0, s) for s in shape)] = True
    return m


def _blob(shape: tuple[int, ...], center: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True)) <= 1.0


def _surface_bruteforce(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: foreground voxels with a face neighbour that is background or outside the array."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    surf = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = np.roll(padded, step, axis=axis)[inner]
            surf |= mask & ~neighbour
    return surf


def _hd95_bruteforce(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> float:
    sp = np.asarray(spacing, float)
    cp = np.argwhere(_surface_bruteforce(p)) * sp
    cg = np.argwhere(_surface_bruteforce(g)) * sp
    d = cdist(cp, cg)  # all pairwise Euclidean distances in mm
    pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
    return float(np.percentile(pooled, 95))


def _confusion(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int, int]:
    tp = fp = fn = tn = 0
    for a, b in zip(p.ravel().tolist(), g.ravel().tolist(), strict=True):
        if a and b:
            tp += 1
        elif a:
            fp += 1
        elif b:
            fn += 1
        else:
            tn += 1
    return tp, fp, fn, tn


@pytest.mark.parametrize("seed", range(5))
def test_dice_matches_monai(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (3, 12, 10, 8)
    preds = [_random_mask(rng, shape[1:], rng.uniform(0.1, 0.6)) for _ in range(shape[0])]
    gts = [_random_mask(rng, shape[1:], rng.uniform(0.1, 0.6)) for _ in range(shape[0])]
    y_pred = torch.from_numpy(np.stack(preds)[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack(gts)[:, None].astype(np.float32))
    ref = compute_dice(y_pred, y, include_background=True).squeeze(1).numpy()
    ours = np.array([M.dice(p, g) for p, g in zip(preds, gts, strict=True)])
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ours, 1.0)


def test_dice_known_value() -> None:
    p = np.zeros((4, 4), bool)
    g = np.zeros((4, 4), bool)
    p[0, :3] = True  # 3 voxels
    g[0, 1:] = True  # 3 voxels, overlap 2
    assert M.dice(p, g) == pytest.approx(4 / 6)


@pytest.mark.parametrize("seed", range(5))
def test_sens_spec_ppv_match_confusion_counts(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    p = _random_mask(rng, (9, 7, 6), 0.3)
    g = _random_mask(rng, (9, 7, 6), 0.4)
    tp, fp, fn, tn = _confusion(p, g)
    assert M.sensitivity(p, g) == pytest.approx(tp / (tp + fn))
    assert M.specificity(p, g) == pytest.approx(tn / (tn + fp))
    assert M.ppv(p, g) == pytest.approx(tp / (tp + fp))
    assert M.dice(p, g) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # the three are different numbers for these masks: catches swapped denominators
    assert len({round(M.sensitivity(p, g), 9), round(M.specificity(p, g), 9), round(M.ppv(p, g), 9)}) == 3


def test_metrics_accept_non_bool_input() -> None:
    p = np.array([[0, 2], [1, 0]], dtype=np.int64)
    g = np.array([[0, 1], [0, 0]], dtype=np.uint8)
    assert M.dice(p, g) == pytest.approx(2 / 3)
    assert M.ppv(p, g) == pytest.approx(0.5)


EMPTY = np.zeros((6, 5, 4), bool)


SOME = EMPTY.copy()
SOME[2:4, 1:3, 1:3] = True


FULL = np.ones_like(EMPTY)


def test_both_empty_conventions() -> None:
    assert M.dice(EMPTY, EMPTY) == 1.0
    assert M.sensitivity(EMPTY, EMPTY) == 1.0
    assert M.ppv(EMPTY, EMPTY) == 1.0
    assert M.specificity(EMPTY, EMPTY) == 1.0  # T0 is everything, all correctly negative
    assert M.hd95(EMPTY, EMPTY) == 0.0


def test_prediction_empty_truth_not() -> None:
    assert M.dice(EMPTY, SOME) == 0.0
    assert M.sensitivity(EMPTY, SOME) == 0.0
    assert M.ppv(EMPTY, SOME) == 0.0
    assert M.specificity(EMPTY, SOME) == 1.0
    assert M.hd95(EMPTY, SOME) == M.HD95_EMPTY_PENALTY


def test_truth_empty_prediction_not() -> None:
    assert M.dice(SOME, EMPTY) == 0.0
    assert M.sensitivity(SOME, EMPTY) == 0.0
    assert M.ppv(SOME, EMPTY) == 0.0
    n_bg = EMPTY.size
    assert M.specificity(SOME, EMPTY) == pytest.approx((n_bg - SOME.sum()) / n_bg)
    assert M.hd95(SOME, EMPTY) == M.HD95_EMPTY_PENALTY


def test_specificity_truth_background_empty() -> None:
    assert M.specificity(FULL, FULL) == 1.0
    assert M.specificity(SOME, FULL) == 0.0
    assert M.sensitivity(SOME, FULL) == pytest.approx(SOME.sum() / FULL.size)


def test_one_empty_mask_scores_the_official_penalty_worse_than_any_real_hd95() -> None:
    """The official BraTS scorer prints 373.13 mm when one mask is empty, whatever the volume and spacing;
    no pair of masks in a 240x240x155 volume is that far apart, so a missed tumour never beats a bad one."""
    # opposite corner voxels of a 240x240x155 volume at 1 mm, as a 2x2x2 grid of 239, 239 and 154 mm steps
    corner, far_corner, empty = np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool)
    corner[0, 0, 0] = True
    far_corner[1, 1, 1] = True
    farthest = M.hd95(corner, far_corner, (239.0, 239.0, 154.0))
    assert farthest == pytest.approx(float(np.linalg.norm([239, 239, 154])))  # the two voxels' distance in mm
    for pred, gt in ((empty, far_corner), (corner, empty)):
        assert M.hd95(pred, gt) == pytest.approx(373.13, abs=0.005)
        assert M.hd95(pred, gt) > farthest
    assert M.hd95(EMPTY, SOME, (2.0, 3.0, 0.5)) == pytest.approx(373.13, abs=0.005)


def test_region_metrics_keys_and_values() -> None:
    rng = np.random.default_rng(7)
    p = _random_mask(rng, (8, 8, 8), 0.3)
    g = _random_mask(rng, (8, 8, 8), 0.3)
    out = M.region_metrics(p, g, spacing=(1.0, 2.0, 0.5))
    assert set(out) == {"dice", "hd95", "sensitivity", "specificity", "ppv", "volume_diff_ml"}
    assert out["dice"] == M.dice(p, g)
    assert out["hd95"] == M.hd95(p, g, (1.0, 2.0, 0.5))
    assert out["sensitivity"] == M.sensitivity(p, g)
    assert out["specificity"] == M.specificity(p, g)
    assert out["ppv"] == M.ppv(p, g)
    no_hd = M.region_metrics(p, g, include_hd95=False)
    assert set(no_hd) == {"dice", "sensitivity", "specificity", "ppv", "volume_diff_ml"}
    assert M.region_metrics(EMPTY, EMPTY) == {
        "dice": 1.0,
        "hd95": 0.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
        "ppv": 1.0,
        "volume_diff_ml": 0.0,
    }


def test_the_volume_difference_is_signed_and_in_ml() -> None:
    """Against the volumes nibabel's header gives (voxel volume = |det(affine)|): an under-segmented region is
    negative, an over-segmented one positive, and a missing prediction is left out of the means (not 0)."""
    affine = np.diag([1.5, 2.0, 0.8, 1.0])
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:8, 2:8, 2:8] = 1
    img = nib.Nifti1Image(gt, affine)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    under, over = gt.copy(), gt.copy()
    under[2:4] = 0  # 72 voxels fewer
    over[8:10, 2:8, 2:8] = 1  # 72 voxels more
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    assert M.region_metrics(under, gt, spacing)["volume_diff_ml"] == pytest.approx(-72 * voxel_ml)
    assert M.region_metrics(over, gt, spacing)["volume_diff_ml"] == pytest.approx(72 * voxel_ml)
    assert np.isnan(M.failure_scores(["volume_diff_ml"])["volume_diff_ml"])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 2.5, 0.7), (3.0, 0.5, 1.2)])
def test_hd95_matches_bruteforce_3d(seed: int, spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(seed)
    shape = (10, 9, 8)
    p = _random_mask(rng, shape, rng.uniform(0.05, 0.5))
    g = _random_mask(rng, shape, rng.uniform(0.05, 0.5))
    assert M.hd95(p, g, spacing) == pytest.approx(_hd95_bruteforce(p, g, spacing), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_bruteforce_blobs(seed: int) -> None:
    # solid blobs have interior voxels, so the surface definition (erosion by a cross) matters
    rng = np.random.default_rng(50 + seed)
    shape = (24, 22, 20)
    p = _blob(shape, tuple(rng.uniform(8, 13, 3)), tuple(rng.uniform(3, 7, 3)))
    g = _blob(shape, tuple(rng.uniform(8, 13, 3)), tuple(rng.uniform(3, 7, 3)))
    spacing = (1.0, 1.5, 2.0)
    assert (p & ~_surface_bruteforce(p)).any()
    assert M.hd95(p, g, spacing) == pytest.approx(_hd95_bruteforce(p, g, spacing), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_bruteforce_2d(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    p = _random_mask(rng, (15, 13), 0.3)
    g = _random_mask(rng, (15, 13), 0.3)
    assert M.hd95(p, g, (0.8, 1.7)) == pytest.approx(_hd95_bruteforce(p, g, (0.8, 1.7)), abs=1e-6)


def test_hd95_identical_masks_is_zero() -> None:
    rng = np.random.default_rng(3)
    m = _random_mask(rng, (12, 12, 12), 0.3)
    assert M.hd95(m, m, (1.0, 2.0, 3.0)) == 0.0
    assert M.hd95(SOME, SOME.copy()) == 0.0


def test_hd95_single_voxels_known_distance() -> None:
    p = np.zeros((10, 10, 10), bool)
    g = np.zeros((10, 10, 10), bool)
    p[2, 2, 2] = True
    g[2, 5, 6] = True  # offset (0, 3, 4) voxels
    assert M.hd95(p, g) == pytest.approx(5.0)
    assert M.hd95(p, g, (1.0, 2.0, 0.5)) == pytest.approx(np.hypot(3 * 2.0, 4 * 0.5))
    assert M.hd95(g, p, (1.0, 2.0, 0.5)) == pytest.approx(np.hypot(3 * 2.0, 4 * 0.5))


def test_hd95_pools_both_directions() -> None:
    # P is a single voxel inside the line T: P->T distances are all 0, T->P distances are 0..9.
    # Pooled percentile differs from either single-direction percentile and from their max.
    p = np.zeros((1, 20), bool)
    g = np.zeros((1, 20), bool)
    p[0, 0] = True
    g[0, :10] = True
    pooled = np.concatenate([[0.0], np.arange(10.0)])
    assert M.hd95(p, g, (1.0, 1.0)) == pytest.approx(np.percentile(pooled, 95))
    assert M.hd95(p, g, (1.0, 1.0)) != pytest.approx(np.percentile(np.arange(10.0), 95))


def test_hd95_anisotropic_spacing_matters() -> None:
    p = np.zeros((12, 12, 12), bool)
    g = np.zeros((12, 12, 12), bool)
    p[3:6, 3:6, 3:6] = True
    g[5:9, 3:6, 4:8] = True
    iso = M.hd95(p, g, (1.0, 1.0, 1.0))
    aniso = M.hd95(p, g, (3.0, 1.0, 1.0))
    assert aniso == pytest.approx(_hd95_bruteforce(p, g, (3.0, 1.0, 1.0)), abs=1e-6)
    assert iso == pytest.approx(_hd95_bruteforce(p, g, (1.0, 1.0, 1.0)), abs=1e-6)
    assert aniso > iso + 1.0


@pytest.mark.parametrize("seed", range(5))
def test_hd95_crop_equivalence(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    shape = (40, 36, 30)
    p = np.zeros(shape, bool)
    g = np.zeros(shape, bool)
    # small random regions placed away from the border, plus (for odd seeds) one touching it
    p[10:18, 12:20, 8:14] = _random_mask(rng, (8, 8, 6), 0.5)
    g[12:21, 11:19, 9:16] = _random_mask(rng, (9, 8, 7), 0.5)
    if seed % 2:
        g[0:3, 30:36, 25:30] = True
    spacing = (1.2, 0.9, 2.5)
    cropped = M.hd95(p, g, spacing, crop=True)
    full = M.hd95(p, g, spacing, crop=False)
    assert cropped == full
    assert cropped == pytest.approx(_hd95_bruteforce(p, g, spacing), abs=1e-6)


def test_hd95_spacing_validation() -> None:
    with pytest.raises(ValueError):
        M.hd95(SOME, SOME, (1.0, 1.0))
    with pytest.raises(ValueError):
        M.hd95(SOME, SOME, (1.0, 0.0, 1.0))


def test_hd95_on_a_brats_sized_volume_equals_the_uncropped_computation() -> None:
    shape = (240, 240, 155)
    g = _blob(shape, (120, 110, 70), (30, 30, 25))
    p = _blob(shape, (123, 108, 72), (28, 31, 24))
    value = M.hd95(p, g)
    assert 0.0 < value < 10.0
    assert value == M.hd95(p, g, crop=False)


@pytest.mark.parametrize("fn", [M.dice, M.sensitivity, M.specificity, M.ppv, M.hd95, M.region_metrics])
def test_shape_mismatch_raises(fn) -> None:
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        fn(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_dice_torch_matches_numpy_including_empty() -> None:
    rng = np.random.default_rng(11)
    shape = (6, 7, 8)
    preds = [_random_mask(rng, shape, 0.3) for _ in range(6)]
    gts = [_random_mask(rng, shape, 0.3) for _ in range(6)]
    preds[1] = np.zeros(shape, bool)  # P empty, T not
    gts[2] = np.zeros(shape, bool)  # T empty, P not
    preds[3] = np.zeros(shape, bool)  # both empty
    gts[3] = np.zeros(shape, bool)
    gts[4] = preds[4].copy()  # identical
    p_t = torch.from_numpy(np.stack(preds))
    g_t = torch.from_numpy(np.stack(gts))
    out = M.dice_torch(p_t, g_t)
    assert out.shape == (6,)
    assert out.dtype == torch.float32
    expected = np.array([M.dice(p, g) for p, g in zip(preds, gts, strict=True)])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert out[1] == 0.0 and out[2] == 0.0 and out[3] == 1.0 and out[4] == 1.0


def test_dice_torch_validation() -> None:
    a = torch.zeros(2, 3, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        M.dice_torch(a, torch.zeros(2, 4, 3, dtype=torch.bool))
    with pytest.raises(TypeError):
        M.dice_torch(a.float(), a.float())
