"""One statistics module for every figure and comparison the package and its benchmarks print.

A figure computed on a few folds or cases is an estimate: it is printed with a 95% interval, and a comparison is
the paired difference (the same folds or cases under both settings), whose interval decides the words: a
difference whose interval holds zero is "no measurable difference". Two kinds of interval, named as what they are:

* ``t``: Student's t interval of a mean of ``n`` paired values (folds), ``mean +- t(0.975, n-1) * sd / sqrt(n)``;
* ``bootstrap``: the percentile interval of a statistic over ``n_boot`` resamples of the cases, drawn within each
  stratum (site) so that every resample holds the sites in their proportions.

Every :class:`Estimate` says which it is, and over how many units.

Examples:
    >>> e = paired_difference([0.80, 0.70, 0.75, 0.72, 0.78], [0.78, 0.68, 0.72, 0.70, 0.75])
    >>> round(e.mean, 3), e.n, e.method, e.verdict()
    (0.024, 5, 't', 'higher')
    >>> summary_interval(0.014, 0.028, 5).holds_zero()
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _stats

__all__ = [
    "Estimate",
    "mean_interval",
    "paired_difference",
    "summary_interval",
    "bootstrap",
    "bootstrap_mean",
    "ratio_interval",
    "slope_interval",
]

#: the level of every interval the package prints
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """An estimate with its interval.

    Attributes:
        value: the estimate (a mean, a difference of means, a ratio, an AUROC...).
        low: the interval's lower end.
        high: the interval's upper end.
        n: the units it rests on (folds or cases).
        method: ``"t"`` (Student's t over ``n`` paired values), ``"bootstrap"`` (percentile, over cases) or
            ``"none"`` (too few units for an interval: ``low`` and ``high`` are NaN).
        sd: the standard deviation of the units' values (NaN for a bootstrap of another statistic).
        se: the standard error of ``value`` (the bootstrap's: the resamples' standard deviation).
        level: the interval's level.
    """

    value: float
    low: float
    high: float
    n: int
    method: str
    sd: float = math.nan
    se: float = math.nan
    level: float = LEVEL

    @property
    def mean(self) -> float:
        """``value``, for estimates of a mean."""
        return self.value

    def holds(self, x: float) -> bool:
        """Whether the interval holds ``x`` (or there is no interval)."""
        return not (self.low > x or self.high < x)

    def holds_zero(self) -> bool:
        """Whether the interval holds zero (or there is no interval): no measurable difference."""
        return self.holds(0.0)

    def above(self, threshold: float = 0.0) -> bool:
        """Whether the whole interval lies above ``threshold`` (a gain beyond its uncertainty)."""
        return bool(self.low > threshold)

    def interval(self, digits: int = 3) -> str:
        """``[low, high]``."""
        if self.method == "none":
            return "[no interval]"
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def describe(self, digits: int = 3, signed: bool = False) -> str:
        """The value with its interval and what the interval is, e.g. ``+0.014 [-0.021, 0.049] (t, 5 folds)``."""
        value = f"{self.value:+.{digits}f}" if signed else f"{self.value:.{digits}f}"
        if self.method == "none":
            return f"{value} (no interval: {self.n} unit{'s' if self.n != 1 else ''})"
        return f"{value} {self.interval(digits)} ({self.method}, n={self.n})"

    def verdict(self) -> str:
        """The words of a difference: ``"no measurable difference"`` when its interval holds zero, else
        ``"higher"`` or ``"lower"``."""
        if self.holds_zero():
            return "no measurable difference"
        return "higher" if self.value > 0 else "lower"

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """The figures as ``{prefix: value, prefix_ci95_low: ..., prefix_ci95_high: ...}`` (``metrics.json``)."""
        tag = f"ci{round(100 * self.level)}"
        return {prefix: self.value, f"{prefix}_{tag}_low": self.low, f"{prefix}_{tag}_high": self.high}


def _t_interval(values: np.ndarray, level: float) -> Estimate:
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n, "none", level=level)
    sd = float(values.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(_stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return Estimate(mean, mean - half, mean + half, n, "t", sd, se, level)


def mean_interval(values: ArrayLike, level: float = LEVEL) -> Estimate:
    """The mean of ``values`` (one per fold) with Student's t interval.

    Examples:
        >>> mean_interval([1.0, 2.0, 3.0]).interval(2)
        '[-0.48, 4.48]'
    """
    return _t_interval(np.asarray(values, dtype=np.float64), level)


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = LEVEL) -> Estimate:
    """``a - b`` over paired units (the same folds or cases), the mean difference with Student's t interval.

    Raises:
        ValueError: ``a`` and ``b`` are not paired (different lengths).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same units: {x.shape} against {y.shape}")
    return _t_interval(x - y, level)


def summary_interval(mean: float, sd: float, n: int, level: float = LEVEL) -> Estimate:
    """Student's t interval from a mean, the standard deviation of its ``n`` values and ``n`` (a table that printed
    only those: the interval is the one its values would give).

    Examples:
        >>> summary_interval(-0.127, 0.144, 5).interval()
        '[-0.306, 0.052]'
    """
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n, "none", level=level)
    se = sd / math.sqrt(n)
    half = float(_stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return Estimate(mean, mean - half, mean + half, n, "t", sd, se, level)


def _resample(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one stratified resample: within each stratum, as many draws with replacement as it holds."""
    out = [
        rng.choice(idx, size=idx.size, replace=True) for idx in (np.flatnonzero(strata == s) for s in np.unique(strata))
    ]
    return np.concatenate(out)


def bootstrap(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    strata: ArrayLike | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """A statistic of cases with its percentile bootstrap interval (resampling cases, within strata).

    Args:
        statistic: ``statistic(*arrays)`` of the cases (their rows, in the same order in every array).
        *arrays: per-case values (arrays of the same length; a row may be a vector).
        strata: the stratum (site) of every case: resamples keep each stratum's number of cases.
        n_boot: resamples.
        seed: the resamples' seed (the same figures every run).
        level: the interval's level.

    Returns:
        The statistic of all the cases, and its interval (``method="bootstrap"``); ``"none"`` below 2 cases.
    """
    cols = [np.asarray(a) for a in arrays]
    n = int(cols[0].shape[0])
    if any(c.shape[0] != n for c in cols):
        raise ValueError("the arrays of a bootstrap need one row per case, the same cases")
    value = float(statistic(*cols))
    if n < 2:
        return Estimate(value, math.nan, math.nan, n, "none", level=level)
    groups = np.zeros(n, dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        idx = _resample(groups, rng)
        draws[b] = statistic(*(c[idx] for c in cols))
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Estimate(value, math.nan, math.nan, n, "none", level=level)
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(value, float(low), float(high), n, "bootstrap", se=float(draws.std(ddof=1)), level=level)


def bootstrap_mean(
    values: ArrayLike, strata: ArrayLike | None = None, n_boot: int = 2000, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """The mean of per-case values with its stratified bootstrap interval (e.g. Dice per case, strata = sites)."""
    x = np.asarray(values, dtype=np.float64)
    est = bootstrap(np.mean, x, strata=strata, n_boot=n_boot, seed=seed, level=level)
    sd = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return Estimate(est.value, est.low, est.high, est.n, est.method, sd, est.se, level)


def ratio_interval(a: ArrayLike, b: ArrayLike, level: float = LEVEL) -> Estimate:
    """The ratio of paired positive measurements ``a / b`` (e.g. seconds of two methods, timed in turn in one run):
    the geometric mean of the pairs' ratios with Student's t interval on their logarithms.

    Examples:
        >>> round(ratio_interval([2.0, 2.2, 1.8], [1.0, 1.1, 0.9]).value, 3)
        2.0
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a ratio interval needs paired positive measurements")
    logs = _t_interval(np.log(x / y), level)
    if logs.method == "none":
        return Estimate(math.exp(logs.value), math.nan, math.nan, logs.n, "none", level=level)
    return Estimate(
        math.exp(logs.value), math.exp(logs.low), math.exp(logs.high), logs.n, "t (log ratio)", se=logs.se, level=level
    )


def slope_interval(x: ArrayLike, y: ArrayLike, level: float = LEVEL) -> tuple[Estimate, float]:
    """The least-squares slope of ``y`` against ``x`` (e.g. memory against cases) with Student's t interval,
    ``slope +- t(0.975, n - 2) * se``, ``se = sqrt(SSR / (n - 2) / Sxx)``.

    Returns:
        The slope (``method="t (slope)"``, ``n`` the points) and the intercept.

    Raises:
        ValueError: fewer than 3 points or a single ``x``.

    Examples:
        >>> est, intercept = slope_interval([1, 2, 3, 4], [2.1, 3.9, 6.1, 7.9])
        >>> round(est.value, 2), round(intercept, 2), est.holds(2.0)
        (1.96, 0.1, True)
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = int(xs.size)
    sxx = float(((xs - xs.mean()) ** 2).sum()) if n else 0.0
    if n < 3 or sxx == 0 or ys.shape != xs.shape:
        raise ValueError("a slope with an interval needs 3 points or more at 2 x values or more")
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / sxx)
    intercept = float(ys.mean() - slope * xs.mean())
    ssr = float(((ys - intercept - slope * xs) ** 2).sum())
    se = math.sqrt(ssr / (n - 2) / sxx)
    half = float(_stats.t.ppf(0.5 + level / 2, n - 2)) * se
    return Estimate(slope, slope - half, slope + half, n, "t (slope)", se=se, level=level), intercept
