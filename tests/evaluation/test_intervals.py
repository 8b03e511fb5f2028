"""The figures' intervals: a bootstrap over cases stratified by site, per region and per site."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brats_lightning.evaluation.intervals import interval_table, region_intervals, site_intervals

REGIONS = ("wt", "tc", "et")


def _rows(dice: dict[str, tuple[float, float, float]], hd95: float = 5.0) -> list[dict]:
    return [
        {"case": c, "region": r, "dice": d[i], "hd95": hd95 if c != "bad" else math.nan}
        for c, d in dice.items()
        for i, r in enumerate(REGIONS)
    ]


def test_the_interval_holds_the_mean_and_follows_the_percentiles_of_resampled_means() -> None:
    rng = np.random.default_rng(1)
    dice = {f"c{i}": tuple(rng.uniform(0.2, 0.9, 3)) for i in range(12)}
    figures, estimates = region_intervals(_rows(dice), {c: "A" for c in dice}, "cv/", n_boot=4000)
    et = np.array([d[2] for d in dice.values()])
    assert figures["cv/dice_et"] == pytest.approx(et.mean())
    # a reference computed another way: the percentile interval of means of case resamples drawn here
    draws = [rng.choice(et, et.size).mean() for _ in range(20_000)]
    low, high = np.quantile(draws, [0.025, 0.975])
    assert figures["cv/dice_et_ci95_low"] == pytest.approx(low, abs=0.01)
    assert figures["cv/dice_et_ci95_high"] == pytest.approx(high, abs=0.01)
    assert figures["cv/dice_mean"] == pytest.approx(np.mean([np.mean(d) for d in dice.values()]))
    assert "| ET |" in interval_table(estimates, "cv/")


def test_resamples_keep_every_site_s_number_of_cases() -> None:
    # one case per site: every stratified resample is the data itself, so the interval is the mean
    dice = {"a": (0.9, 0.8, 0.1), "b": (0.7, 0.6, 0.9), "c": (0.8, 0.5, 0.4)}
    figures, _ = region_intervals(_rows(dice), {"a": "1", "b": "2", "c": "3"}, "cv/")
    assert figures["cv/dice_et_ci95_low"] == pytest.approx(figures["cv/dice_et"])
    assert figures["cv/dice_et_ci95_high"] == pytest.approx(figures["cv/dice_et"])
    # unstratified, the same cases give an interval of some width
    pooled, _ = region_intervals(_rows(dice), {}, "cv/")
    assert pooled["cv/dice_et_ci95_high"] - pooled["cv/dice_et_ci95_low"] > 0.2


def test_undefined_values_are_left_out_and_sites_get_their_own_interval() -> None:
    dice = {"a": (0.9, 0.8, 0.7), "b": (0.7, 0.6, 0.5), "bad": (0.5, 0.5, 0.5), "d": (0.6, 0.6, 0.2)}
    sites = {"a": "X", "b": "X", "bad": "X", "d": "Y"}
    figures, _ = region_intervals(_rows(dice), sites, "cv/")
    assert figures["cv/hd95_wt"] == pytest.approx(5.0)  # the NaN of "bad" left out, not propagated
    per_site, by_site = site_intervals(_rows(dice), sites, "cv/")
    assert per_site["cv/site/X/dice_et"] == pytest.approx(np.mean([0.7, 0.5, 0.5]))
    assert 0.5 <= per_site["cv/site/X/dice_et_ci95_low"] < per_site["cv/site/X/dice_et_ci95_high"] <= 0.7
    assert per_site["cv/site/Y/dice_et"] == pytest.approx(0.2)
    assert math.isnan(per_site["cv/site/Y/dice_et_ci95_low"])  # one case: no interval
    assert set(by_site) == {"X", "Y"} and "cv/site/X/hd95_wt" not in per_site
