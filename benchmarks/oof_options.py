"""Options measured on a finished cross-validation's out-of-fold predictions, each against the recipe, with intervals.

Usage::

    python -m brats_lightning experiment=real_fast data.root=../shared/data/brats2018 data.split=site \\
        cv.probabilities=true hydra.run.dir=RUN
    python benchmarks/oof_options.py RUN --prepared data/cache/prepared/<data set>
    python benchmarks/oof_options.py RUN --prepared ... --against OTHER_RUN/cv/per_case.csv   # two scorings

What is measured, on the same out-of-fold predictions (no model is trained again):

* **The enhancing-tumour decision** (``--et-thresholds``): the recipe decides each voxel's class by the largest
  of the averaged class probabilities; the option also calls enhancing every voxel of the predicted tumour whose
  enhancing probability reaches a threshold (trading surplus PPV for sensitivity). The threshold is chosen
  **nested**: each fold's cases get the threshold chosen on the other folds (the clean-up's rule: the largest gain
  in (Dice + lesion-wise Dice) / 2 whose 95% t interval over the folds lies above zero, else the recipe's argmax),
  then each case gets its fold's clean-up (``cv/folds.csv``), as the recipe's figures do.
* ``--against``: another scoring of the same cases (e.g. the same run aggregated with other clean-up candidates).

Each row: the recipe's mean, the option's, and their paired difference over cases with its 95% interval (a
bootstrap over cases, stratified by site: :func:`brats_lightning.stats.bootstrap_mean`), and "no measurable
difference" when it holds zero. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _common import json_line, table

from brats_lightning.data.cache import load_prepared
from brats_lightning.data.labels import REGIONS, get_convention
from brats_lightning.evaluation.lesions import brats2023_lesion_metrics
from brats_lightning.evaluation.metrics import dice, region_metrics
from brats_lightning.inference.cleanup import apply_cleanup, choose_cleanup
from brats_lightning.inference.decision import region_classes
from brats_lightning.stats import bootstrap_mean

CONVENTION = get_convention("brats2017")


def _rows_of(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """case -> region -> metric -> value, of a ``per_case.csv``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k not in ("case", "region") and v not in ("", None)}
            out.setdefault(row["case"], {})[row["region"]] = values
    return out


def _case(job: tuple) -> dict:
    """One case: per ET threshold (None: argmax), its clean-up applied, each region's Dice, sensitivity, PPV and
    lesion-wise Dice, and the clean-up's objective."""
    npz, folder, cleanup, thresholds = job
    case = load_prepared(folder)
    label = np.asarray(case.label).transpose(1, 2, 0)
    with np.load(npz) as z:
        if "probabilities" not in z.files:
            raise SystemExit(f"{npz}: no probabilities (run the cross-validation with cv.probabilities=true)")
        probs = z["probabilities"].astype(np.float32)
        recorded = z["classes"]
    probs = probs.reshape(probs.shape[-4:])  # (K, Z, X, Y)
    argmax = probs.argmax(0).astype(np.uint8)
    if not np.array_equal(argmax, recorded):
        changed = float(np.mean(argmax != recorded))
        if changed > 1e-4:  # float16 rounding may flip a few ties
            raise SystemExit(f"{npz}: its classes are not the argmax of its probabilities ({changed:.2%} differ)")
    _, _, et = region_classes(CONVENTION)
    tumour = probs[0] < 0.5
    out = {}
    for t in thresholds:
        classes = argmax.copy()
        if t is not None:
            classes[tumour & (probs[et] >= t)] = et
        pred = apply_cleanup(classes.transpose(1, 2, 0), case.spacing, CONVENTION, cleanup)
        pm, gm = CONVENTION.region_masks(pred), CONVENTION.region_masks(label)
        regions = {}
        for r in REGIONS:
            m = region_metrics(pm[r], gm[r], case.spacing, False, lesion_wise=False)
            m["lesion_dice"] = brats2023_lesion_metrics(pm[r], gm[r], case.spacing)["lesion_dice"]
            m["dice"] = dice(pm[r], gm[r])
            regions[r] = m
        score = float(np.mean([(regions[r]["dice"] + regions[r]["lesion_dice"]) / 2 for r in REGIONS]))
        out["argmax" if t is None else f"{t:g}"] = {"regions": regions, "score": score}
    return out


def _compare(
    name: str, a: dict[str, dict], b: dict[str, dict], site_of: dict[str, str], metrics: tuple[str, ...]
) -> tuple[list[list[str]], dict[str, float]]:
    """Rows (metric x region) of option ``b`` against recipe ``a``: means and the paired difference's interval."""
    rows, figures = [], {}
    ids = sorted(set(a) & set(b))
    strata = [site_of.get(c, "all") for c in ids]
    for metric in metrics:
        for r in REGIONS:
            x = np.array([a[c][r][metric] for c in ids])
            y = np.array([b[c][r][metric] for c in ids])
            keep = np.isfinite(x) & np.isfinite(y)
            diff = bootstrap_mean((y - x)[keep], strata=np.array(strata)[keep])
            rows.append(
                [name, f"{metric} {r.upper()}", f"{x[keep].mean():.3f}", f"{y[keep].mean():.3f}",
                 f"{diff.value:+.3f}", diff.interval(), diff.verdict()]
            )  # fmt: skip
            figures |= {f"{name}/{metric}_{r}_change": diff.value, f"{name}/{metric}_{r}_change_ci95_low": diff.low,
                        f"{name}/{metric}_{r}_change_ci95_high": diff.high}  # fmt: skip
    return rows, figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished cross-validation (cv/folds.csv, oof/)")
    parser.add_argument("--prepared", type=Path, help="the data set's prepared cases (the cache; for --et-thresholds)")
    parser.add_argument("--et-thresholds", type=float, nargs="*", default=[0.4, 0.3, 0.2, 0.1])
    parser.add_argument("--against", type=Path, help="another per_case.csv of the same cases (b) against cv/ (a)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    run: Path = args.run
    with (run / "cv" / "folds.csv").open() as f:
        folds = list(csv.DictReader(f))
    if not folds:
        raise SystemExit(f"{run / 'cv' / 'folds.csv'}: no cases")
    ids = [r["case"] for r in folds]
    fold_of = {r["case"]: int(r["fold"]) for r in folds}
    site_of = {r["case"]: r["site"] for r in folds}
    all_rows: list[list[str]] = []
    figures: dict[str, float] = {}
    metrics = ("dice", "sensitivity", "ppv", "lesion_dice")

    if args.et_thresholds and args.prepared is None:
        raise SystemExit(
            "--et-thresholds needs --prepared <the data set's prepared cases> (or --et-thresholds with none)"
        )
    if args.et_thresholds:
        thresholds: list[float | None] = [None, *sorted(args.et_thresholds, reverse=True)]
        jobs = [
            (run / "oof" / f"{r['case']}.npz", args.prepared / r["case"], json.loads(r["cleanup"]), thresholds)
            for r in folds
        ]
        with ProcessPoolExecutor(max(1, args.workers)) as pool:
            results = dict(zip(ids, pool.map(_case, jobs)))
        names = ["argmax" if t is None else f"{t:g}" for t in thresholds]
        scores = np.array([[results[c][n]["score"] for n in names] for c in ids])
        fold_arr = np.array([fold_of[c] for c in ids])
        chosen = {k: choose_cleanup(scores, fold_arr, fold_arr != k)[0] for k in sorted(set(fold_arr.tolist()))}
        final, gains = choose_cleanup(scores, fold_arr, np.ones(len(ids), bool))
        print("ET threshold, per-fold gain of (Dice + lesion-wise Dice) / 2 over argmax, on all the folds:")
        print(
            table(
                [[n, f"{g:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]"]
                 for n, g, lo, hi in zip(names, gains["gain"], gains["ci95_low"], gains["ci95_high"])],
                ["ET decision", "gain", "95% interval (t, folds)"],
            )
        )  # fmt: skip
        print(f"chosen on all folds: {names[final]}; nested, per fold: { {k: names[v] for k, v in chosen.items()} }\n")
        recipe = {c: results[c]["argmax"]["regions"] for c in ids}
        option = {c: results[c][names[chosen[fold_of[c]]]]["regions"] for c in ids}
        rows, figs = _compare("et_threshold_nested", recipe, option, site_of, metrics)
        all_rows += rows
        figures |= figs | {"et_threshold_final": float("nan") if final == 0 else float(names[final])}
        recorded = _rows_of(run / "cv" / "per_case.csv")
        drift = max(abs(recorded[c][r]["dice"] - recipe[c][r]["dice"]) for c in ids for r in REGIONS)
        figures["recipe_dice_max_abs_diff_from_per_case_csv"] = drift
        print(f"(the recipe recomputed here against cv/per_case.csv: largest Dice difference {drift:.2e})\n")
    if args.against:
        a, b = _rows_of(run / "cv" / "per_case.csv"), _rows_of(args.against)
        rows, figs = _compare(f"against:{args.against.parent.parent.name}", a, b, site_of, metrics + ("fn_lesions",))
        all_rows += rows
        figures |= figs
    print(table(all_rows, ["option", "figure", "recipe", "option", "change", "95% interval", "verdict"]))
    print(
        "\nchange: the option minus the recipe, the mean over cases of the paired difference; 95% interval: a "
        f"bootstrap over the {len(ids)} cases, stratified by site."
    )
    print(json_line(figures | {"cases": len(ids), "run": str(run)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
