"""Two scorings of the same cross-validated cases, paired by case: each figure's change with its 95% interval.

Usage::

    python benchmarks/compare_cv.py RUN_A RUN_B [--metrics dice sensitivity ppv lesion_dice fn_lesions]

``RUN_A`` and ``RUN_B`` are ``experiment=real_fast`` folders (their ``cv/per_case.csv``; the sites come from
``RUN_A/cv/folds.csv``): the same run scored two ways (e.g. another clean-up or an enhancing-tumour threshold,
``hydra.run.dir=<a copy of the run>`` resumed in place with other ``cv.*`` choices), or two trainings on the same
folds (an option against the recipe: the same split, ``data.split`` and seed). Each row: A's mean, B's, and the
mean over cases of B minus A with its 95% interval (a bootstrap over cases, stratified by site:
:func:`brats_lightning.stats.bootstrap_mean`), and "no measurable difference" when the interval holds zero. Two
trainings differ by the training's own run-to-run variation too, which one pair of runs cannot separate from the
option's effect. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from _common import json_line, table

from brats_lightning.data.labels import REGIONS
from brats_lightning.stats import bootstrap_mean


def per_case(run: Path) -> dict[str, dict[str, dict[str, float]]]:
    """case -> region -> metric -> value, of ``<run>/cv/per_case.csv``."""
    path = run / "cv" / "per_case.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (is {run} a finished experiment=real_fast run?)")
    out: dict[str, dict[str, dict[str, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k not in ("case", "region") and v not in ("", None)}
            out.setdefault(row["case"], {})[row["region"]] = values
    return out


def compare(
    a: dict[str, dict[str, dict[str, float]]],
    b: dict[str, dict[str, dict[str, float]]],
    site_of: dict[str, str],
    metrics: list[str],
) -> tuple[list[list[str]], dict[str, float]]:
    """Rows (metric x region) of B against A, and their figures (``<metric>_<region>_change`` and its interval)."""
    ids = sorted(set(a) & set(b))
    rows, figures = [], {}
    for metric in metrics:
        for r in REGIONS:
            x = np.array([a[c][r].get(metric, np.nan) for c in ids])
            y = np.array([b[c][r].get(metric, np.nan) for c in ids])
            keep = np.isfinite(x) & np.isfinite(y)
            if not keep.any():
                continue
            diff = bootstrap_mean((y - x)[keep], strata=[site_of.get(c, "all") for c, k in zip(ids, keep) if k])
            rows.append(
                [f"{metric} {r.upper()}", f"{x[keep].mean():.3f}", f"{y[keep].mean():.3f}", f"{diff.value:+.3f}",
                 diff.interval(), diff.verdict()]
            )  # fmt: skip
            figures |= diff.as_dict(f"{metric}_{r}_change")
    return rows, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the reference run folder")
    parser.add_argument("b", type=Path, help="the other run folder (the same cases)")
    parser.add_argument("--metrics", nargs="+", default=["dice", "sensitivity", "ppv", "lesion_dice", "fn_lesions"])
    args = parser.parse_args(argv)
    a, b = per_case(args.a), per_case(args.b)
    if set(a) != set(b):
        raise SystemExit(f"{args.a} and {args.b} scored different cases: {sorted(set(a) ^ set(b))[:5]} ...")
    with (args.a / "cv" / "folds.csv").open() as f:
        site_of = {r["case"]: r["site"] for r in csv.DictReader(f)}
    rows, figures = compare(a, b, site_of, args.metrics)
    print(f"A: {args.a}\nB: {args.b}\n")
    print(table(rows, ["figure", "A", "B", "B - A", "95% interval", "verdict"]))
    print(f"\nB - A: the mean over the {len(a)} cases of the paired difference; 95% interval: a bootstrap over cases, "
          "stratified by site.")  # fmt: skip
    print(json_line(figures | {"cases": len(a), "a": str(args.a), "b": str(args.b)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
