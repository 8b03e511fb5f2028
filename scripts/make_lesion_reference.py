"""Write the official scorers' lesion-wise figures for the deterministic cases of ``tests/evaluation/lesion_cases.py``.

Development only (the official packages are not dependencies; ``brats-evaluation`` is AGPL). Run once in
an environment of their own, and commit the JSON it writes; ``tests/evaluation/test_lesions.py`` then compares
``evaluate`` against it in the default suite::

    python -m venv /tmp/evalvenv && /tmp/evalvenv/bin/pip install brats-evaluation==0.0.10 pandas nibabel
    git clone https://github.com/rachitsaluja/BraTS-2023-Metrics /tmp/brats2023metrics
    /tmp/evalvenv/bin/python scripts/make_lesion_reference.py --brats2023 /tmp/brats2023metrics

Output: ``tests/evaluation/official_lesion_reference.json``: the package versions, and case -> region ->
column (``tp_lesions`` ... ``pq_dice`` from ``brats-evaluation``'s ``config_gli.yaml``; ``lesion_dice``,
``lesion_hd95`` from the 2023 ``get_LesionWiseResults(..., "BraTS-GLI")``); NaN is written as null.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brats2023", type=Path, required=True, help="a checkout of rachitsaluja/BraTS-2023-Metrics")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "evaluation" / "official_lesion_reference.json")
    args = parser.parse_args()
    crosscheck = _module(HERE / "crosscheck_official_scorers.py", "crosscheck_official_scorers")
    lesion_cases = _module(ROOT / "tests" / "evaluation" / "lesion_cases.py", "lesion_cases")
    evaluator, lesion_wise = crosscheck.load_official(args.brats2023)
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, gt_dir = lesion_cases.write(Path(tmp))
        for case in sorted(lesion_cases.cases()):
            regions = crosscheck.official_scores(pred_dir / f"{case}.nii.gz", gt_dir / f"{case}.nii.gz", evaluator,
                                                 lesion_wise)  # fmt: skip
            scores[case] = {
                r: {k: (None if math.isnan(v) else v) for k, v in cols.items()} for r, cols in regions.items()
            }
            print(case, scores[case], flush=True)
    doc = {
        "what": "the official scorers on tests/evaluation/lesion_cases.py (scripts/make_lesion_reference.py)",
        "brats-evaluation": version("brats-evaluation"),
        "panoptica": version("panoptica"),
        "brats2023_metrics": "rachitsaluja/BraTS-2023-Metrics get_LesionWiseResults(..., 'BraTS-GLI')",
        "cases": scores,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
