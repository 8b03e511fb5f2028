"""How well the uncertainty finds the errors, and how the cases do with a sequence missing: out of fold.

Usage::

    python -m brats_lightning experiment=real_fast data.root=... cv.uncertainty=true \\
        data.modality_dropout=0.25 'cv.missing_modalities=[flair,t1,t1c,t2]'
    python benchmarks/uncertainty.py <cross-validation run folder>

Reads what the cross-validation run measured on its out-of-fold predictions (``brats_lightning/crossval/``:
every case segmented by the fold model that never saw it, the test-time flips as the members):

* **voxel map**: the AUROC of the normalised entropy for telling the wrong voxels (predicted class !=
  truth) from the right ones, on a seeded sample of brain voxels per case, pooled; beside it the baseline it must
  beat (one minus the maximum class probability) and the paired gain over it; and the mean of the per-case AUROCs;
* **case score**: Spearman's correlation between the members' agreement and the case's real mean Dice
  over the regions (after the run's clean-up); positive: ranking by agreement puts first the cases
  segmented worst;
* every figure with its 95% interval: a percentile bootstrap over the cases, stratified by site
  (:mod:`brats_lightning.stats`, computed by the run);
* **missing sequences** (``cv.missing_modalities``): the out-of-fold Dice per region with each
  modality missing (its channels zeroed), beside all present (one pass, no clean-up: ``cv_single``).

The last line is a JSON object with ``voxel_auroc``, ``voxel_auroc_max_probability``,
``voxel_auroc_gain_over_max_probability``, ``voxel_auroc_per_case_mean``, ``case_spearman`` (each with its
``_ci95_low`` and ``_ci95_high``) and the missing-sequence Dice.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from _common import json_line, table

from brats_lightning.data.labels import REGIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a cross-validation run folder (experiment=real_fast)")
    args = parser.parse_args()
    metrics = json.loads((args.run / "metrics.json").read_text())
    figures: dict = {}
    has_missing = any(k.startswith("cv_missing_") for k in metrics)
    if "cv/uncertainty_voxel_auroc" not in metrics and not has_missing:
        sys.exit(
            f"{args.run}: neither uncertainty nor missing-sequence figures (run the cross-validation with "
            "cv.uncertainty=true or cv.missing_modalities=[...])"
        )
    if "cv/uncertainty_voxel_auroc" in metrics:
        rows = list(csv.DictReader((args.run / "cv" / "uncertainty.csv").open()))
        cells = [
            [r["case"], *(f"{float(r[k]):.3f}" for k in ("voxel_auroc", "agreement", "mean_dice"))]
            for r in sorted(rows, key=lambda r: float(r["agreement"]))
        ]
        print(table(cells, ["case (least agreement first)", "voxel AUROC", "agreement", "real mean Dice"]))
        names = {
            "voxel_auroc": ("cv/uncertainty_voxel_auroc", "voxel AUROC, entropy (pooled)"),
            "voxel_auroc_max_probability": (
                "cv/uncertainty_voxel_auroc_max_probability",
                "voxel AUROC, 1 - max probability (the baseline)",
            ),
            "voxel_auroc_gain_over_max_probability": (
                "cv/uncertainty_voxel_auroc_gain_over_max_probability",
                "entropy's gain over the baseline (paired)",
            ),
            "voxel_auroc_per_case_mean": ("cv/uncertainty_voxel_auroc_per_case", "voxel AUROC, mean of the cases'"),
            "case_spearman": ("cv/uncertainty_case_spearman", "Spearman(agreement, real mean Dice)"),
        }
        summary = []
        for short, (key, label) in names.items():
            if key not in metrics:
                continue
            low, high = metrics.get(f"{key}_ci95_low"), metrics.get(f"{key}_ci95_high")
            figures |= {short: metrics[key], f"{short}_ci95_low": low, f"{short}_ci95_high": high}
            digits = "+.4f" if "gain" in short else ".3f"
            interval = "(no interval: the run predates them)" if low is None else f"[{low:{digits}}, {high:{digits}}]"
            summary.append([label, f"{metrics[key]:{digits}}", interval])
        figures["cases"] = len(rows)
        print()
        print(table(summary, [f"out of fold, {len(rows)} cases", "figure", "95% interval (bootstrap over cases)"]))
        print()
    missing = sorted({k.split("/")[0].removeprefix("cv_missing_") for k in metrics if k.startswith("cv_missing_")})
    if missing:
        out = [["all four present", *(f"{metrics[f'cv_single/dice_{r}']:.3f}" for r in REGIONS)]]
        figures["all_present"] = {r: metrics[f"cv_single/dice_{r}"] for r in REGIONS}
        for m in missing:
            out.append([f"{m} missing", *(f"{metrics[f'cv_missing_{m}/dice_{r}']:.3f}" for r in REGIONS)])
            figures[f"missing_{m}"] = {r: metrics[f"cv_missing_{m}/dice_{r}"] for r in REGIONS}
        print(table(out, ["out-of-fold Dice (one pass, no clean-up)", "WT", "TC", "ET"]))
    print(json_line(figures))


if __name__ == "__main__":
    main()
