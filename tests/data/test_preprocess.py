"""brats_lightning.data.preprocess: percentile clipping, N4, z-score, the brain's box, and the preprocessing and
symmetry options (one declaration, checked)."""

from __future__ import annotations

import numpy as np
import pytest

from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.preprocess import (
    PreprocessConfig,
    SymmetryConfig,
    brain_bbox,
    clip_percentiles,
    crop,
    histogram_standardise,
    n4_correct,
    uncrop,
    zscore,
)
from brats_lightning.errors import ConfigError


def test_clipping_is_numpy_s_percentiles_inside_the_brain() -> None:
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 50.0, (2, 12, 10, 8)).astype(np.float32)
    mask = np.zeros((12, 10, 8), bool)
    mask[2:10, 2:8, 1:7] = True
    out = clip_percentiles(image, mask, 1.0, 99.0)
    for c in range(2):
        lo, hi = np.percentile(image[c][mask], [1.0, 99.0])
        np.testing.assert_allclose(out[c][mask], np.clip(image[c][mask], lo, hi))
        assert np.all(out[c][~mask] == 0)
    assert not np.shares_memory(out, image)  # the input is not modified


def test_zscore_gives_zero_mean_unit_variance_inside_the_brain_and_zero_outside() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(300.0, 40.0, (3, 10, 9, 7)).astype(np.float32)
    mask = np.zeros((10, 9, 7), bool)
    mask[1:8, 2:7, 1:6] = True
    out = zscore(image, mask)
    inside = out[:, mask]
    np.testing.assert_allclose(inside.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(inside.std(1), 1, atol=1e-4)
    assert np.all(out[:, ~mask] == 0)


def test_the_brain_box_crops_and_uncrops_exactly() -> None:
    mask = np.zeros((20, 16, 12), bool)
    mask[5:9, 3:11, 2:4] = True
    box = brain_bbox(mask, margin=2)
    assert box == ((3, 11), (1, 13), (0, 6))  # the margin, cut at the volume's edge
    arr = np.arange(20 * 16 * 12, dtype=np.int32).reshape(20, 16, 12) * mask
    back = uncrop(crop(arr, box), box, arr.shape)
    assert np.array_equal(back, arr)


def test_the_options_are_checked_and_their_cache_key_is_stable() -> None:
    prep = PreprocessConfig.from_dict({"n4": ["t1", "t1c"], "clip_percentiles": [1, 99]})
    assert prep.n4 == ("t1", "t1c") and prep.clip_percentiles == (1.0, 99.0)
    # what the cache key hashes: plain lists, the same for every spelling of the same options
    assert prep.to_dict() == PreprocessConfig(n4=("t1", "t1c")).to_dict()
    assert prep.to_dict()["clip_percentiles"] == [1.0, 99.0]
    with pytest.raises(ConfigError, match=r"^data.preprocess: clip_percentiles: the low percentile must be below"):
        PreprocessConfig.from_dict({"clip_percentiles": [99, 1]})
    with pytest.raises(ConfigError, match=r"^data.preprocess: n4: unknown modalities \['t3'\]"):
        PreprocessConfig.from_dict({"n4": ["t3"]})
    # the symmetry maps' key ignores the device, and holds nothing when the maps are off
    on = SymmetryConfig(enabled=True, device="cpu")
    assert on.key_dict() == SymmetryConfig(enabled=True, device="cuda").key_dict() and "device" not in on.key_dict()
    assert SymmetryConfig(window=7).key_dict() == {"enabled": False}
    assert on.replace(axis_modality="flair").axis_modality == "flair"
    with pytest.raises(ValueError, match="must be odd"):
        on.replace(window=8)


def test_prepared_cases_are_z_scored_inside_the_brain(tiny_dm_kwargs: dict) -> None:
    dm = BratsDataModule(**tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup()
    c = dm.train_cases[0]
    img = np.asarray(c.image, dtype=np.float32)
    inside = img.transpose(1, 0, 2, 3)[:, np.asarray(c.mask)]
    np.testing.assert_allclose(inside.mean(1), 0, atol=0.02)
    np.testing.assert_allclose(inside.std(1), 1, atol=0.02)
    assert np.all(img.transpose(1, 0, 2, 3)[:, ~np.asarray(c.mask)] == 0)


def test_n4_removes_a_smooth_bias_field() -> None:
    x, y, z = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 48), np.linspace(-1, 1, 32), indexing="ij")
    mask = x**2 + y**2 + z**2 < 0.8
    layers = np.sin(6 * z) > 0
    tissue = np.where(layers, 100.0, 160.0)  # two tissues, in layers across the field's direction
    bias = np.exp(0.35 * (x + 0.5 * y))  # a smooth multiplicative field
    img = (tissue * bias * mask).astype(np.float32)
    out = n4_correct(img, mask, shrink=2, iterations=(50, 50))

    def cv(a: np.ndarray) -> float:  # spread within one tissue
        v = a[mask & layers]
        return float(v.std() / v.mean())

    assert cv(img) > 0.1 and cv(out) < 0.2 * cv(img)
    assert np.all(out[~mask] == 0)


def test_histogram_standardisation_undoes_a_monotone_scanner_distortion() -> None:
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    mask = np.zeros((20, 20, 20), bool)
    mask[2:18, 2:18, 2:18] = True
    tissue = rng.normal(size=mask.shape)
    # two scanners: one linear, one that squeezes the bright end (a monotone, non-linear distortion)
    a = np.stack([100 + 20 * tissue])
    b = np.stack([np.exp(0.5 * tissue)])
    sa, sb = histogram_standardise(a, mask), histogram_standardise(b, mask)
    t = tissue[mask]
    inner = (t > np.percentile(t, 1)) & (t < np.percentile(t, 99))  # between the outer landmarks
    assert np.abs(sa[0][mask] - sb[0][mask])[inner].max() < 0.1  # the same standard intensities, to 0.1
    assert np.abs(zscore(a, mask)[0][mask] - zscore(b, mask)[0][mask])[inner].max() > 1.0  # a z-score cannot
    # the deciles land on the standard normal's, and normal data is (nearly) its own z-score; 0 outside the brain
    v = sa[0][mask]
    assert np.percentile(v, [10, 50, 90]) == pytest.approx(norm.ppf([0.1, 0.5, 0.9]), abs=1e-3)
    assert np.abs(v - zscore(a, mask)[0][mask]).max() < 0.1 and not sa[0][~mask].any()
    # beyond the outer landmarks the intensities keep growing (an enhancing rim keeps its contrast)
    top = a[0][mask].argmax()
    assert v[top] > norm.ppf(0.99) + 0.5
    assert not histogram_standardise(np.ones((1, 20, 20, 20)), mask).any()  # a constant channel: zeros
