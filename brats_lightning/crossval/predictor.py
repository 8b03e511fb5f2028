"""The final predictor of a cross-validation (``cv.final``): one model of the same recipe trained on every case, or
the ensemble of its fold models, written for ``predict`` and tested on the held-out cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from brats_lightning.crossval.oof import inference_trainer
from brats_lightning.evaluation.intervals import interval_table, region_intervals
from brats_lightning.evaluation.results import print_table, run_metrics, summarise, write_results
from brats_lightning.files import atomic_path, read_checkpoint, write_text_atomic
from brats_lightning.load import load_predictor
from brats_lightning.load.runs import PREDICTOR_FILE, predictor_checkpoints

__all__ = ["FINAL_CHECKPOINT", "held_out_test", "predictor_description", "write_predictor"]

#: the model trained on every case (``cv.final=all``), inside the run folder
FINAL_CHECKPOINT = Path("final") / "checkpoints" / "last.ckpt"


def predictor_description(final: str, n_folds: int, n_cases: int) -> str:
    """What the shipped predictor is, and what estimates it, in words (``predictor.json``, the log)."""
    if final == "all":
        return (
            f"one model trained on all {n_cases} cases with the recipe of the fold models, the clean-up and test-time "
            f"flips chosen on the out-of-fold segmentations; estimated by the out-of-fold figures (each case scored "
            f"by a fold model of the same recipe trained on the other {n_folds - 1} folds); no case is left that did "
            "not train it, so its own difference from that estimate is not measured"
        )
    return (
        f"the ensemble of the {n_folds} fold models (probabilities averaged), with the clean-up and test-time flips "
        "chosen on the out-of-fold segmentations; the out-of-fold figures are of single fold models, not of the "
        "ensemble (every case trained all but one of its members)"
    )


def write_predictor(out: Path, final: str, n_folds: int, n_cases: int, cleanup: dict, flips: list[str]) -> None:
    """Store the final clean-up, flips and enhancing-tumour threshold (``cleanup["et_threshold"]``, when chosen) in the
    shipped checkpoints (``cv.final``: the model trained on all the cases, or every fold's), and list them in
    ``predictor.json``."""

    if final == "all":
        paths = [out / FINAL_CHECKPOINT]
    else:
        paths = [out / f"fold_{k}" / "checkpoints" / "last.ckpt" for k in range(n_folds)]
    et_threshold = cleanup.get("et_threshold")
    post = {k: v for k, v in cleanup.items() if k != "et_threshold"}
    for p in paths:
        ckpt = read_checkpoint(p)
        ckpt["postprocess"], ckpt["tta_flips"], ckpt["et_threshold"] = post, list(flips), et_threshold
        with atomic_path(p) as tmp:
            torch.save(ckpt, tmp)
    doc = {
        "what": f"the final predictor of a cross-validation run: {predictor_description(final, n_folds, n_cases)}",
        "final": final,
        "checkpoints": [str(p.relative_to(out)) for p in paths],
        "et_threshold": et_threshold,
        "postprocess": post,
        "tta_flips": flips,
    }
    write_text_atomic(out / PREDICTOR_FILE, json.dumps(doc, indent=1) + "\n")


def held_out_test(out: Path, dm: Any, cfg: DictConfig) -> dict[str, float]:
    """The final predictor (``predictor.json``: its models, clean-up and flips) on the held-out test cases."""

    ensemble, _ = load_predictor(out, flips=None)  # the run folder: predictor.json, the flips chosen out of fold
    members = predictor_checkpoints(out)
    trainer = inference_trainer(cfg, progress=False)
    trainer.test(ensemble, datamodule=dm, verbose=False)
    what = "trained on all the cases" if len(members) == 1 else f"ensemble of {len(members)} folds"
    name = f"{cfg.model.get('name') or 'model'} ({what})"
    summary = summarise(
        ensemble.test_results, method=name, evaluation="held-out test: cases that chose nothing", run=str(out)
    )
    write_results(out / "test", ensemble.test_results, summary, name)
    print_table(summary, f"Held-out test ({summary['n_cases']} cases) - {out}")
    rows = ensemble.test_results
    figures, estimates = region_intervals(rows, dm.case_groups(sorted({str(r["case"]) for r in rows})), "test/")
    print(interval_table(estimates, "test/", "Held-out test: mean [95% interval], a bootstrap over cases by site"))
    return figures | run_metrics(summary, prefix="test/")
