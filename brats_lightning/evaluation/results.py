"""Results of a set of scored cases, one way everywhere: ``train``'s test set, ``evaluate``, the report.

A *row* is one case and region: ``{"case", "region", <metric>: value, ...}``, with the metrics of
the registry (:data:`brats_lightning.evaluation.metrics.METRICS`). From rows this module makes

* the **summary** (:func:`summarise`): mean, median, std and count per region and metric, over the
  cases where the value is defined (lesion-wise scores are NaN for two empty masks);
* the run's flat figures (:func:`run_metrics`): ``test/<metric>_<region>`` means and ``test/dice_mean``;
* the files (:func:`write_results`): ``per_case.csv``, ``summary.json`` and ``summary.md`` (the
  papers' table layout, then mean ± std and median per metric and region);
* the console table (:func:`print_table`).

Region names come from :mod:`brats_lightning.data.labels`, metric titles from the registry: a new
metric shows up in all of them once registered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brats_lightning.data.labels import REGION_TITLES, REGIONS
from brats_lightning.evaluation.metrics import METRICS
from brats_lightning.files import write_csv_atomic, write_text_atomic

__all__ = [
    "regions_of",
    "PAPER_METRICS",
    "columns_of",
    "markdown_table",
    "print_table",
    "run_metrics",
    "stats",
    "summarise",
    "write_results",
]

#: the metrics of the papers' tables (Havaei Table 1-2, Shen Table 1), in our names
PAPER_METRICS: tuple[str, ...] = ("dice", "sensitivity", "specificity", "ppv")


def columns_of(rows: Iterable[dict]) -> list[str]:
    """The registered metrics present in ``rows``, in registry order."""
    present = set().union(*(row.keys() for row in rows))
    return [m for m in METRICS if m in present]


def stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, median, std and count over the values that are defined (finite)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(np.mean(v)), "median": float(np.median(v)), "std": float(np.std(v)), "n": int(v.size)}


def regions_of(rows: Iterable[dict]) -> list[str]:
    """The regions of ``rows``: whole tumour, core, enhancing, then any more they score (BraTS 2024's), in order."""
    more = [r for r in dict.fromkeys(row["region"] for row in rows) if r not in REGIONS]
    return [*REGIONS, *more]


def summarise(rows: Sequence[dict], **extra: Any) -> dict:
    """The summary of ``rows``: ``{"n_cases", "metrics": {region: {metric: stats}}, **extra}``."""
    columns = columns_of(rows)
    return {
        "n_cases": len({row["case"] for row in rows}),
        "metrics": {
            r: {m: stats([row[m] for row in rows if row["region"] == r]) for m in columns} for r in regions_of(rows)
        },
        **extra,
    }


def _title(region: str) -> str:
    return REGION_TITLES.get(region, region.upper())


def run_metrics(summary: dict, prefix: str = "test/") -> dict[str, float]:
    """Flat means: ``<prefix><metric>_<region>`` and ``<prefix>dice_mean`` (the regions' mean Dice)."""
    per_region = summary["metrics"]
    out = {f"{prefix}{m}_{r}": per_region[r][m]["mean"] for r in per_region for m in per_region[r]}
    if summary["n_cases"] and "dice" in per_region[REGIONS[0]]:
        out[f"{prefix}dice_mean"] = sum(out[f"{prefix}dice_{r}"] for r in REGIONS) / len(REGIONS)
    return out


def _fmt(metric: str, value: float) -> str:
    decimals = METRICS[metric].decimals if metric in METRICS else 3
    return f"{value:.{decimals}f}"


def markdown_table(summary: dict, name: str = "prediction") -> str:
    """Two markdown tables: the papers' layout (one row, Dice / sensitivity / specificity / PPV per
    region, as Havaei Table 1 and Shen Table 1), then mean ± std and median per metric and region."""
    per_region = summary["metrics"]
    columns = list(per_region[REGIONS[0]])
    paper = [m for m in PAPER_METRICS if m in columns]
    titles = [REGION_TITLES[r] for r in REGIONS]
    regions = list(per_region)  # the three, then any more the convention scores
    lines = [
        "| Method | " + " | ".join(f"{METRICS[m].title} {t}" for m in paper for t in titles) + " |",
        "|---|" + "---:|" * (len(REGIONS) * len(paper)),
        f"| {name} | " + " | ".join(f"{per_region[r][m]['mean']:.2f}" for m in paper for r in REGIONS) + " |",
        "",
        "| Metric | "
        + " | ".join(f"{_title(r)} (mean ± std)" for r in regions)
        + " | "
        + " | ".join(f"{_title(r)} (median)" for r in regions)
        + " |",
        "|---|" + "---:|" * (2 * len(regions)),
    ]
    for m in columns:
        st = [per_region[r][m] for r in regions]
        lines.append(
            f"| {METRICS[m].title} | "
            + " | ".join(f"{_fmt(m, x['mean'])} ± {_fmt(m, x['std'])}" for x in st)
            + " | "
            + " | ".join(_fmt(m, x["median"]) for x in st)
            + " |"
        )
    lines += [
        "",
        f"{summary['n_cases']} cases. Regions: complete = whole tumour, core = tumour core, "
        "enhancing = enhancing tumour.",
    ]
    if summary.get("missing"):
        lines.append(f"Missing predictions (scored as failures): {', '.join(summary['missing'])}.")
    for key, what in (("invalid", "Invalid predictions (scored as failures)"), ("not_scored", "Not scored")):
        for case_id, why in summary.get(key, {}).items():
            lines.append(f"{what}: {case_id}: {why}")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, rows: Sequence[dict], summary: dict, name: str) -> None:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "per_case.csv", list(rows), ["case", "region", *columns_of(rows)])
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "summary.md", markdown_table(summary, name))


def print_table(summary: dict, title: str) -> None:
    """A rich table on the console: mean ± std of every metric per region."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    per_region = summary["metrics"]
    for r in per_region:
        table.add_column(f"{_title(r)} ({r.upper()})" if r in REGION_TITLES else r.upper(), justify="right")
    for m in per_region[REGIONS[0]]:
        table.add_row(
            METRICS[m].title,
            *[f"{_fmt(m, per_region[r][m]['mean'])} ± {_fmt(m, per_region[r][m]['std'])}" for r in per_region],
        )
    Console().print(table)
