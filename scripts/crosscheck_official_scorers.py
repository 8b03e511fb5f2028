"""Cross-check ``evaluate``'s lesion-wise columns against the official BraTS scorers (development only).

The official packages are not dependencies of brats_lightning (``brats-evaluation`` is AGPL). Run
this script in an environment of its own that has them::

    python -m venv /tmp/evalvenv && /tmp/evalvenv/bin/pip install brats-evaluation connected-components-3d pandas
    git clone https://github.com/rachitsaluja/BraTS-2023-Metrics /tmp/brats2023metrics   # the 2023 lesion-wise code
    python -m brats_lightning.evaluate pred_dir=P gt_dir=G out_dir=OURS          # in brats_lightning's environment
    /tmp/evalvenv/bin/python scripts/crosscheck_official_scorers.py --ours OURS/per_case.csv \\
        --pred P --gt G --brats2023 /tmp/brats2023metrics

It converts every label file to the BraTS 2023 labels the official scorers expect (enhancing = 3),
scores each case with ``brats-evaluation``'s ``config_gli.yaml`` (panoptica: ``tp``, ``fp``, ``fn``,
``rq``, ``sq_dsc``, ``pq_dsc``) and with the 2023 ``get_LesionWiseResults(..., "BraTS-GLI")``
(``Lesion_Wise_Score_Dice``, ``Lesion_Wise_Score_HD95``), and prints, per column, the largest
difference from ours. The last line is a JSON object of those differences.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np

REGIONS = {"wt": "WT", "tc": "TC", "et": "ET"}


def to_2023(src: Path, dst: Path) -> None:
    """The label file in BraTS 2023 labels (4 -> 3: enhancing); files with 3 and no 4 are already so."""
    img = nib.load(str(src))
    arr = np.asarray(img.dataobj).astype(np.uint8)
    if 4 in arr:
        if 3 in arr:
            raise SystemExit(f"{src}: holds 3 and 4 (BRATS 2013 labels); this cross-check is for 2017/2023 files")
        arr[arr == 4] = 3
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(dst))


def difference(mine: float, theirs: float) -> float:
    """``|mine - theirs|``, 0 when both are NaN (undefined alike), infinite when only one is: a NaN never
    hides a disagreement (``max(0.0, nan)`` is 0.0)."""
    if np.isnan(mine) or np.isnan(theirs):
        return 0.0 if np.isnan(mine) and np.isnan(theirs) else float("inf")
    return abs(mine - theirs)


def official_scores(pred: Path, gt: Path, evaluator, get_lesion_wise_results) -> dict[str, dict[str, float]]:
    """Both official scorers on one pair of BraTS 2023 label files: region -> our column -> value."""
    panoptic = {k: v.to_dict(True) for k, v in evaluator.evaluate(str(pred), str(gt)).items()}
    lesion = get_lesion_wise_results(str(pred), str(gt), "BraTS-GLI").set_index("Labels")
    out = {}
    for ours_region, label in REGIONS.items():
        pr = panoptic[ours_region]
        out[ours_region] = {
            "tp_lesions": float(pr["tp"]),
            "fp_lesions": float(pr["fp"]),
            "fn_lesions": float(pr["fn"]),
            "rq": float(pr["rq"]),
            "sq_dice": float(pr["sq_dsc"]),
            "pq_dice": float(pr["pq_dsc"]),
            "lesion_dice": float(lesion.loc[label, "LesionWise_Score_Dice"]),
            "lesion_hd95": float(lesion.loc[label, "LesionWise_Score_HD95"]),
        }
    return out


def load_official(brats2023: Path):
    """The official scorers: panoptica's evaluator of ``brats-evaluation``'s ``config_gli.yaml``, and the
    BraTS 2023 ``get_LesionWiseResults`` (made to run on today's pandas)."""
    sys.path.insert(0, str(brats2023))
    import pandas as pd

    # The 2023 code was written for an older pandas: DataFrame.append (only a log table uses it) and
    # replace(inf, 374) on a frame that also holds arrays of lesion numbers (meant for the HD95 column).
    if not hasattr(pd.DataFrame, "append"):
        pd.DataFrame.append = lambda self, other, **kw: pd.concat(
            [self, other], ignore_index=kw.get("ignore_index", False)
        )
    _replace = pd.DataFrame.replace

    def replace_numbers(self, to_replace=None, value=None, **kw):
        if isinstance(to_replace, float) and np.isinf(to_replace):
            out = self.copy()
            numeric = out.select_dtypes("number").columns
            out[numeric] = _replace(out[numeric], to_replace, value)
            return out
        return _replace(self, to_replace, value, **kw)

    pd.DataFrame.replace = replace_numbers
    if not hasattr(np, "Inf"):  # its vendored surface_distance predates NumPy 2 (np.Inf is np.inf)
        np.Inf = np.inf
    from metrics import get_LesionWiseResults  # the official 2023 code
    from panoptica import Panoptica_Evaluator

    config = files("brats_evaluation").joinpath("configs", "config_gli.yaml")
    return Panoptica_Evaluator.load_from_config(str(config)), get_LesionWiseResults


def gt_file(gt: Path, case: str) -> Path:
    flat = gt / f"{case}.nii.gz"
    return flat if flat.is_file() else next((gt / case).glob("*seg.nii.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, required=True, help="per_case.csv written by brats_lightning.evaluate")
    parser.add_argument("--pred", type=Path, required=True)
    parser.add_argument("--gt", type=Path, required=True)
    parser.add_argument("--brats2023", type=Path, required=True, help="a checkout of rachitsaluja/BraTS-2023-Metrics")
    args = parser.parse_args()
    evaluator, lesion_wise = load_official(args.brats2023)
    ours = {(r["case"], r["region"]): r for r in csv.DictReader(args.ours.open())}
    cases = sorted({c for c, _ in ours})
    official: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            p, g = Path(tmp) / f"{case}_pred.nii.gz", Path(tmp) / f"{case}_gt.nii.gz"
            to_2023(args.pred / f"{case}.nii.gz", p)
            to_2023(gt_file(args.gt, case), g)
            for region, scores in official_scores(p, g, evaluator, lesion_wise).items():
                official[(case, region)] = scores
            print(case, {r: {k: round(v, 4) for k, v in official[(case, r)].items()} for r in REGIONS}, flush=True)
    worst: dict[str, float] = {}
    for key, theirs in official.items():
        for col, v in theirs.items():
            worst[col] = max(worst.get(col, 0.0), difference(float(ours[key][col]), float(v)))
    print(f"{len(cases)} cases x 3 regions; largest difference per column (ours vs official):")
    for col, d in worst.items():
        print(f"  {col:12s} {d:.2e}")
    print(json.dumps(worst))


if __name__ == "__main__":
    main()
