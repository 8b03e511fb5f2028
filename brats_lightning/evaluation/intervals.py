"""Every figure of a set of cases with its 95% interval: a bootstrap over cases, stratified by site
(:func:`brats_lightning.stats.bootstrap_mean`), per region and per site.

Fourteen cases make any mean noisy (per-case enhancing-tumour Dice has a standard deviation near 0.3), so a
cross-validation's figures are stored and printed with their intervals: ``<prefix><metric>_<region>`` beside
``<prefix><metric>_<region>_ci95_low`` and ``..._ci95_high`` in ``metrics.json`` (e.g. ``cv/dice_et_ci95_low``),
and per site as ``<prefix>site/<site>/dice_<region>`` with its own interval (a bootstrap within the site's cases;
no interval below two cases).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from brats_lightning.data.labels import REGIONS
from brats_lightning.evaluation.metrics import METRICS
from brats_lightning.evaluation.results import columns_of
from brats_lightning.stats import Estimate, bootstrap_mean

__all__ = ["case_values", "interval_table", "region_intervals", "site_intervals", "site_table"]

#: the columns printed with their interval (every column is stored)
SHOWN = ("dice", "sensitivity", "ppv", "hd95", "lesion_dice")


def case_values(rows: Sequence[dict], metric: str, region: str) -> dict[str, float]:
    """Case -> its ``metric`` of ``region`` (cases where it is undefined left out, as the means leave them)."""
    out = {}
    for row in rows:
        if row["region"] == region and metric in row:
            value = float(row[metric])
            if math.isfinite(value):
                out[str(row["case"])] = value
    return out


def _estimate(values: Mapping[str, float], site_of: Mapping[str, str], n_boot: int, stratified: bool) -> Estimate:
    ids = sorted(values)
    strata = [site_of.get(c, "all") for c in ids] if stratified else None
    return bootstrap_mean([values[c] for c in ids], strata=strata, n_boot=n_boot)


def region_intervals(
    rows: Sequence[dict], site_of: Mapping[str, str], prefix: str = "cv/", n_boot: int = 2000
) -> tuple[dict[str, float], dict[str, Estimate]]:
    """Each metric of each region, and the regions' mean Dice, with their 95% interval (bootstrap over cases,
    stratified by site).

    Args:
        rows: per-case rows (``case``, ``region`` and metric columns), as ``evaluate`` writes them.
        site_of: case -> site (the strata; a case not in it is in the stratum ``"all"``).
        prefix: the figures' prefix (``cv/``, ``test/``).
        n_boot: bootstrap resamples (seeded: the same figures every run).

    Returns:
        The flat figures (``<prefix><metric>_<region>`` and its ``_ci95_low`` / ``_ci95_high``,
        ``<prefix>dice_mean`` likewise) and the estimates by the same names.
    """
    estimates: dict[str, Estimate] = {}
    for metric in columns_of(rows):
        for region in REGIONS:
            values = case_values(rows, metric, region)
            if values:
                estimates[f"{prefix}{metric}_{region}"] = _estimate(values, site_of, n_boot, True)
    per_region = [case_values(rows, "dice", r) for r in REGIONS]
    common = sorted(set.intersection(*(set(v) for v in per_region))) if all(per_region) else []
    if common:
        mean = {c: float(np.mean([v[c] for v in per_region])) for c in common}
        estimates[f"{prefix}dice_mean"] = _estimate(mean, site_of, n_boot, True)
    figures: dict[str, float] = {}
    for name, est in estimates.items():
        figures |= est.as_dict(name)
    return figures, estimates


def site_intervals(
    rows: Sequence[dict], site_of: Mapping[str, str], prefix: str = "cv/", n_boot: int = 2000
) -> tuple[dict[str, float], dict[str, dict[str, Estimate]]]:
    """Per site: each region's Dice and the regions' mean Dice, with a bootstrap interval over the site's own cases
    (none below two cases): ``<prefix>site/<site>/dice_<region>`` and its ``_ci95_low`` / ``_ci95_high``."""
    figures: dict[str, float] = {}
    by_site: dict[str, dict[str, Estimate]] = {}
    for site in sorted({site_of.get(str(r["case"]), "all") for r in rows}):
        chosen = [r for r in rows if site_of.get(str(r["case"]), "all") == site]
        figures_site, estimates = region_intervals(chosen, {}, prefix=f"{prefix}site/{site}/", n_boot=n_boot)
        keep = {k: v for k, v in estimates.items() if k.rpartition("/")[2].startswith("dice_")}
        by_site[site] = {k.rpartition("/")[2]: v for k, v in keep.items()}
        figures |= {k: v for k, v in figures_site.items() if any(k.startswith(name) for name in keep)}
    return figures, by_site


def interval_table(estimates: Mapping[str, Estimate], prefix: str = "cv/", title: str = "") -> str:
    """Markdown: a row per region, a column per metric of :data:`SHOWN`, each ``mean [low, high]``."""
    shown = [m for m in SHOWN if f"{prefix}{m}_{REGIONS[0]}" in estimates]
    head = ["region", *(METRICS[m].title if m in METRICS else m for m in shown)]
    lines = [f"{title}\n" if title else "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * len(shown)]
    for region in REGIONS:
        cells = []
        for m in shown:
            est = estimates.get(f"{prefix}{m}_{region}")
            digits = 1 if m == "hd95" else 3
            cells.append(_cell(est, digits))
        lines.append(f"| {region.upper()} | " + " | ".join(cells) + " |")
    mean = estimates.get(f"{prefix}dice_mean")
    if mean is not None and "dice" in shown:
        lines.append("| mean | " + " | ".join([_cell(mean, 3)] + ["" for _ in shown[1:]]) + " |")
    return "\n".join(line for line in lines if line) + "\n"


def site_table(by_site: Mapping[str, Mapping[str, Estimate]], counts: Mapping[str, int]) -> str:
    """Markdown: a row per site, its cases and each region's Dice with the interval over its own cases."""
    head = ["site", "cases", *(f"Dice {r.upper()}" for r in REGIONS), "Dice mean"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for site, ests in by_site.items():
        cells = [_cell(ests.get(f"dice_{r}"), 3) for r in REGIONS] + [_cell(ests.get("dice_mean"), 3)]
        lines.append(f"| {site} | {counts.get(site, 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(est: Estimate | None, digits: int) -> str:
    if est is None:
        return "–"
    if est.method == "none":
        return f"{est.value:.{digits}f}"
    return f"{est.value:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]"
