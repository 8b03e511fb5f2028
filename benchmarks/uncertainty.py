"""How well the uncertainty finds the errors, and how the cases do with a sequence missing: out of fold.

Usage::

    python -m brats_lightning experiment=real_fast data.root=... cv.uncertainty=true \\
        data.modality_dropout=0.25 'cv.missing_modalities=[flair,t1,t1c,t2]'
    python benchmarks/uncertainty.py <cross-validation run folder>

Reads what the cross-validation run measured on its out-of-fold predictions (``brats_lightning/crossval/``:
every case segmented by the fold model that never saw it, the test-time flips as the members):

* **voxel map**: the AUROC of the normalised entropy for telling the wrong voxels (predicted class !=
  truth) from the right ones, over the brains' voxels pooled, and the mean of the per-case AUROCs;
* **case score**: Spearman's correlation between the members' agreement and the case's real mean Dice
  over the regions (after the run's clean-up); positive: ranking by agreement puts first the cases
  segmented worst;
* **missing sequences** (``cv.missing_modalities``): the out-of-fold Dice per region with each
  modality missing (its channels zeroed), beside all present (one pass, no clean-up: ``cv_single``).

The last line is a JSON object with ``voxel_auroc``, ``voxel_auroc_per_case_mean``, ``case_spearman``
and the missing-sequence Dice.
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
        figures |= {
            "voxel_auroc": metrics["cv/uncertainty_voxel_auroc"],
            "voxel_auroc_per_case_mean": metrics["cv/uncertainty_voxel_auroc_per_case"],
            "case_spearman": metrics["cv/uncertainty_case_spearman"],
            "cases": len(rows),
        }
        print(
            f"\nvoxel AUROC {figures['voxel_auroc']:.3f} (pooled), "
            f"{figures['voxel_auroc_per_case_mean']:.3f} (mean per case); Spearman(agreement, real mean Dice) "
            f"{figures['case_spearman']:+.3f} over {len(rows)} cases\n"
        )
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
