"""Score predictions as BraTS does: ``python -m brats_lightning.evaluate pred_dir=... gt_dir=... out_dir=...``.

The work is :func:`brats_lightning.evaluation.folders.evaluate_dirs` (see there for the conventions, the
files written and how a bad file is counted); this is its command line (``conf/evaluate.yaml``).
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from brats_lightning.config import register_resolvers
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.evaluation.results import print_table
from brats_lightning.options import check_config, command

__all__ = ["main"]

log = logging.getLogger("brats_lightning.evaluate")


@command("evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see ``conf/evaluate.yaml``); exit status 1 when a file could not be scored."""
    register_resolvers()
    check_config(cfg, "evaluate")  # every option's type and range, before any work
    conv = {
        k: v if isinstance(v, str) else list(v) for k, v in (("pred", cfg.pred_convention), ("gt", cfg.gt_convention))
    }
    summary = evaluate_dirs(
        cfg.pred_dir,
        cfg.gt_dir,
        cfg.out_dir,
        conv["pred"],
        conv["gt"],
        cfg.hd95,
        cfg.get("name"),
        cfg.get("lesion_wise", True),
    )
    bad = len(summary["missing"]) + len(summary["invalid"])
    print_table(
        summary, f"{summary['n_cases']} cases ({bad} missing or invalid, {len(summary['not_scored'])} not scored)"
    )
    log.info("Wrote per_case.csv, summary.json and summary.md into %s", cfg.out_dir)
    failed = {**summary["invalid"], **summary["not_scored"]}
    if failed:
        print(f"{len(failed)} case(s) could not be scored as given (see summary.json):", file=sys.stderr)
        for case_id, why in failed.items():
            print(f"FAILED {case_id}: {why}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
