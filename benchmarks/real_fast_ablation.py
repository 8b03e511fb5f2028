"""The ablation table of ``experiment=real_fast``: each option's out-of-fold Dice change, with its 95% interval.

Usage::

    python -m brats_lightning experiment=real_fast_ablation data.root=../shared/data/brats2018
    python benchmarks/real_fast_ablation.py outputs/real_fast_ablation/multiruns/<date> [more folders or runs]

Every job is a whole 5-fold cross-validation (``+ablation=<setting>``) in the same wall-clock budget
on the same site-stratified folds. Its figures are out of fold: every case segmented by the fold
model that never trained on it (``metrics.json``). The rows compare like for like:

* an option (U-Net decoder, region outputs, augmentation, 2.5D, MONAI's DynUNet) and the paper's
  training: that run's raw final weights, without mirroring or clean-up (``cv_raw``; ``cv_single``
  for the paper's run, which averages no weights), against the baseline run's;
* weight averaging (EMA): the baseline run's averaged weights against its raw weights (same training);
* test-time mirroring (the configured flips: identity, left-right, anterior-posterior; 3 passes): the baseline
  run's averaged weights with and without flips;
* the clean-up (chosen out of fold, nested): the baseline run with flips, with and without it;
* all options together: that run's plain weights against the baseline's (as an option's row); then,
  on that run, mirroring and the clean-up as above, and its whole pipeline (weights, flips, clean-up)
  against the paper's whole pipeline (flips and clean-up chosen the same way).

"Change" is the mean over folds of the per-fold difference of mean Dice (the same cases in both runs), "sd" the
standard deviation of those per-fold differences, "95% interval" Student's t interval of their mean
(:func:`brats_lightning.stats.paired_difference`, 4 degrees of freedom for 5 folds), and the verdict "no measurable
difference" when it holds zero. The folds are paired; the runs are one training each, so the interval holds the
folds' variation, not the run-to-run variation of the training (about 0.01 mean Dice at these budgets). The last
line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml
from _common import json_line, table

from brats_lightning.data.labels import REGIONS
from brats_lightning.stats import paired_difference

ORDER = ["paper", "baseline", "unet", "regions", "augment", "context", "narrow", "dynunet", "all"]
NAMES = {
    "paper": "paper's training (natural slices, CE, constant LR, fp32)",
    "baseline": "baseline: issue 15's real_fast (tumour sampling, CE + Dice, budget LR, bf16)",
    "unet": "+ U-Net decoder with skips (Shen encoder, symmetry maps)",
    "regions": "+ region outputs (sigmoid WT/TC/ET, BCE + Dice)",
    "augment": "+ intensity, elastic and stronger spatial augmentation",
    "context": "+ 2.5D context (neighbouring slices)",
    "narrow": "+ half width (a quarter of the FLOPs per step)",
    "dynunet": "MONAI DynUNet 2D (same inputs, training, budget)",
    "ema": "+ weight averaging (EMA) [baseline run]",
    "tta": "+ test-time mirroring, 3 passes (identity, lr, ap) [baseline run, EMA weights]",
    "cleanup": "+ clean-up chosen out of fold, nested [baseline run]",
    "all": "all options: U-Net, regions, augmentation, 2.5D",
    "all_tta": "+ test-time mirroring, 3 passes (identity, lr, ap) [all-options run]",
    "all_cleanup": "+ clean-up chosen out of fold, nested [all-options run]",
    "all_vs_paper": "all options, whole pipeline vs the paper's whole pipeline",
}


def _runs(paths: list[Path]) -> dict[str, dict]:
    """setting -> its run's metrics.json (the ``+ablation=`` override of every finished cross-validation)."""
    runs: dict[str, dict] = {}
    for path in paths:
        candidates = [path] if (path / ".hydra").is_dir() else sorted(p for p in path.iterdir() if p.is_dir())
        for run in candidates:
            ov = run / ".hydra" / "overrides.yaml"
            if not ov.is_file():
                continue
            if not (run / "metrics.json").is_file():
                print(f"skipping {run}: unfinished (no metrics.json)", file=sys.stderr)
                continue
            overrides = yaml.safe_load(ov.read_text()) or []
            setting = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("ablation=")), None)
            if setting:
                runs[setting] = json.loads((run / "metrics.json").read_text())
    return runs


def _per_fold(metrics: dict, prefix: str) -> np.ndarray | None:
    keys = [k for k in metrics if k.startswith(f"{prefix}/fold") and k.endswith("dice_mean")]
    folds = sorted(int(k.split("/fold")[1].split("/")[0]) for k in keys)
    if not folds:
        return None
    return np.array([metrics[f"{prefix}/fold{k}/dice_mean"] for k in folds])


def _plain(metrics: dict) -> str:
    """The prefix of a run's raw weights without flips or clean-up."""
    return "cv_raw" if "cv_raw/dice_mean" in metrics else "cv_single"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="multirun folders or runs of experiment=real_fast_ablation")
    args = parser.parse_args()
    runs = _runs(args.paths)
    if "baseline" not in runs:
        sys.exit(f"no finished baseline run under {', '.join(map(str, args.paths))}")
    base = runs["baseline"]
    # (row, run, prefix, reference run, reference prefix)
    rows_spec = [(s, s, _plain(runs[s]), "baseline", _plain(base)) for s in ORDER if s in runs]
    rows_spec += [
        ("ema", "baseline", "cv_single", "baseline", "cv_raw"),
        ("tta", "baseline", "cv_flips", "baseline", "cv_single"),
        ("cleanup", "baseline", "cv", "baseline", "cv_flips"),
    ]
    if "all" in runs:
        rows_spec += [
            ("all_tta", "all", "cv_flips", "all", "cv_single"),
            ("all_cleanup", "all", "cv", "all", "cv_flips"),
        ]
        if "paper" in runs:
            rows_spec.append(("all_vs_paper", "all", "cv", "paper", "cv"))
    out_rows, figures = [], {}
    for name, run, prefix, ref_run, ref_prefix in rows_spec:
        m, ref = runs[run], runs[ref_run]
        if f"{prefix}/dice_mean" not in m or f"{ref_prefix}/dice_mean" not in ref:
            continue
        dice = [m[f"{prefix}/dice_{r}"] for r in REGIONS]
        folds, ref_folds = _per_fold(m, prefix), _per_fold(ref, ref_prefix)
        is_ref = (run, prefix) == (ref_run, ref_prefix)
        diff = None
        if not is_ref and folds is not None and ref_folds is not None:
            if folds.shape != ref_folds.shape:
                print(f"skipping {name}: {folds.size} folds against {ref_folds.size}", file=sys.stderr)
                continue
            diff = paired_difference(folds, ref_folds)
        steps = sum(v for k, v in m.items() if k.startswith("cv/fold") and k.endswith("/steps"))
        out_rows.append(
            [
                NAMES.get(name, name),
                f"{prefix} vs {ref_run}:{ref_prefix}",
                *(f"{v:.3f}" for v in dice),
                f"{np.mean(dice):.3f}",
                *(
                    [f"{diff.value:+.3f}", f"{diff.sd:.3f}", diff.interval(), diff.verdict()]
                    if diff is not None
                    else ["", "", "", ""]
                ),
                f"{steps:.0f}",
            ]
        )
        figures[name] = {
            **{f"dice_{r}": float(v) for r, v in zip(REGIONS, dice)},
            "dice_mean": float(np.mean(dice)),
            **(
                {"change": diff.value, "sd": diff.sd, "se": diff.se, "n": diff.n, **diff.as_dict("change")}
                if diff is not None
                else {}
            ),
            "steps": float(steps),
        }
    header = [
        "setting",
        "compared",
        "Dice WT",
        "Dice TC",
        "Dice ET",
        "mean",
        "change",
        "sd",
        "95% interval",
        "verdict",
        "steps (5 folds)",
    ]
    print(
        "Out-of-fold Dice (cross-validation, every case by the fold model that never trained on it); change: mean "
        "paired per-fold difference, sd over folds, 95% t interval of the mean"
    )
    print(table(out_rows, header))
    print(json_line(figures))


if __name__ == "__main__":
    main()
