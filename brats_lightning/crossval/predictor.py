"""The final predictor of a cross-validation: the ensemble of its fold models, written for ``predict`` and
tested on the held-out cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from brats_lightning.crossval.oof import inference_trainer
from brats_lightning.evaluation.results import print_table, run_metrics, summarise, write_results
from brats_lightning.files import atomic_path, read_checkpoint, write_text_atomic
from brats_lightning.load import load_predictor
from brats_lightning.load.runs import PREDICTOR_FILE, predictor_checkpoints

__all__ = ["held_out_test", "write_predictor"]


def write_predictor(out: Path, n_folds: int, cleanup: dict, flips: list[str]) -> None:
    """Store the final clean-up and flips in every fold's checkpoint, and list them in ``predictor.json``."""

    paths = [out / f"fold_{k}" / "checkpoints" / "last.ckpt" for k in range(n_folds)]
    for p in paths:
        ckpt = read_checkpoint(p)
        ckpt["postprocess"], ckpt["tta_flips"] = dict(cleanup), list(flips)
        with atomic_path(p) as tmp:
            torch.save(ckpt, tmp)
    doc = {
        "what": "the final predictor of a cross-validation run: the ensemble of its fold models (probabilities "
        "averaged), with the clean-up and test-time flips chosen on the out-of-fold segmentations",
        "checkpoints": [str(p.relative_to(out)) for p in paths],
        "postprocess": cleanup,
        "tta_flips": flips,
    }
    write_text_atomic(out / PREDICTOR_FILE, json.dumps(doc, indent=1) + "\n")


def held_out_test(out: Path, dm: Any, cfg: DictConfig) -> dict[str, float]:
    """The final predictor (the fold models' ensemble, its clean-up and flips) on the held-out test cases."""

    ensemble, _ = load_predictor(out, flips=None)  # the run folder: predictor.json, the flips chosen out of fold
    members = predictor_checkpoints(out)
    trainer = inference_trainer(cfg, progress=False)
    trainer.test(ensemble, datamodule=dm, verbose=False)
    name = f"{cfg.model.get('name') or 'model'} (ensemble of {len(members)} folds)"
    summary = summarise(
        ensemble.test_results, method=name, evaluation="held-out test: cases that chose nothing", run=str(out)
    )
    write_results(out / "test", ensemble.test_results, summary, name)
    print_table(summary, f"Held-out test ({summary['n_cases']} cases) - {out}")
    return run_metrics(summary, prefix="test/")
