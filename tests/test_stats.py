"""brats_lightning.stats: every interval against a reference computed another way."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from brats_lightning.stats import (
    bootstrap,
    bootstrap_mean,
    mean_interval,
    paired_difference,
    ratio_interval,
    slope_interval,
    summary_interval,
)


def test_the_t_interval_is_scipy_s() -> None:
    x = np.array([0.012, 0.004, 0.031, 0.020, 0.017])
    ref = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    est = mean_interval(x)
    assert (est.low, est.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert est.sd == pytest.approx(x.std(ddof=1)) and est.se == pytest.approx(x.std(ddof=1) / math.sqrt(5))
    assert est.method == "t" and est.n == 5 and not est.holds_zero() and est.verdict() == "higher"
    # from the summary a table printed, the same interval
    again = summary_interval(float(x.mean()), float(x.std(ddof=1)), 5)
    assert (again.low, again.high) == pytest.approx((est.low, est.high), abs=1e-12)


def test_a_paired_difference_is_the_interval_of_the_differences() -> None:
    a, b = np.array([0.80, 0.70, 0.75, 0.72, 0.78]), np.array([0.81, 0.69, 0.76, 0.70, 0.80])
    est = paired_difference(a, b)
    ref = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (est.low, est.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert est.holds_zero() and est.verdict() == "no measurable difference"
    with pytest.raises(ValueError, match="paired values need the same units"):
        paired_difference([1.0, 2.0], [1.0])


def test_too_few_units_give_no_interval_and_no_verdict_of_a_difference() -> None:
    one = mean_interval([0.3])
    assert one.method == "none" and math.isnan(one.low) and one.holds_zero()
    assert "no interval" in one.describe() and one.verdict() == "no measurable difference"


def test_the_bootstrap_keeps_the_strata_and_matches_the_t_interval_on_normal_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.7, 0.2, 400)
    boot = bootstrap_mean(x, n_boot=4000, seed=1)
    t = mean_interval(x)
    assert boot.value == pytest.approx(x.mean()) and boot.method == "bootstrap"
    assert boot.low == pytest.approx(t.low, abs=0.006) and boot.high == pytest.approx(t.high, abs=0.006)
    # a stratified resample holds every stratum's count: a statistic that counts them never varies
    strata = np.array(["a"] * 3 + ["b"] * 7)
    counts = bootstrap(lambda s: float((s == "a").sum()), strata, strata=strata, n_boot=200)
    assert counts.low == counts.high == 3.0
    free = bootstrap(lambda s: float((s == "a").sum()), strata, n_boot=200)
    assert free.low < 3.0 < free.high
    # the same seed, the same interval
    assert bootstrap_mean(x, seed=5).interval() == bootstrap_mean(x, seed=5).interval()


def test_a_ratio_is_the_geometric_mean_with_an_interval_on_the_log_scale() -> None:
    a, b = np.array([2.1, 1.9, 2.0, 2.2]), np.array([1.0, 1.0, 1.0, 1.1])
    est = ratio_interval(a, b)
    logs = np.log(a / b)
    ref = scipy_stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
    assert est.value == pytest.approx(math.exp(logs.mean()))
    assert (est.low, est.high) == pytest.approx((math.exp(ref.low), math.exp(ref.high)))
    assert not est.holds(1.0)
    with pytest.raises(ValueError, match="paired positive"):
        ratio_interval([1.0, 0.0], [1.0, 1.0])


def test_the_metrics_json_keys() -> None:
    est = summary_interval(0.7, 0.1, 14)
    assert set(est.as_dict("cv/dice_et")) == {"cv/dice_et", "cv/dice_et_ci95_low", "cv/dice_et_ci95_high"}


def test_the_slope_interval_is_scipy_s_regression() -> None:
    x = [4, 4, 4, 16, 16, 16, 48, 48, 48]
    y = [101.0, 99.5, 100.7, 128.2, 131.0, 129.9, 204.1, 199.0, 203.3]
    ref = scipy_stats.linregress(x, y)
    est, intercept = slope_interval(x, y)
    half = scipy_stats.t.ppf(0.975, len(x) - 2) * ref.stderr
    assert est.value == pytest.approx(ref.slope) and intercept == pytest.approx(ref.intercept)
    assert (est.low, est.high) == pytest.approx((ref.slope - half, ref.slope + half))
    assert est.se == pytest.approx(ref.stderr) and est.n == 9
    with pytest.raises(ValueError, match="3 points or more at 2 x values"):
        slope_interval([4, 4, 4], [1.0, 2.0, 3.0])
