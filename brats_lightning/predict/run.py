"""Segment new scans: ``python -m brats_lightning.predict ckpt_path=... input_dir=... output_dir=...``.

For every case of ``input_dir`` (any supported layout) the scan is preprocessed exactly as during
training (the data configuration is stored in the checkpoint), segmented slice by slice with
whole-slice (fully convolutional) inference, optionally cleaned of small or flat blobs
(Havaei et al. Sec. 4), and written as ``<output_dir>/<case>.nii.gz`` in the input's exact grid
(shape, affine, orientation, header) and in the input's label convention (``output_convention``).
With ``probabilities=true``, ``<output_dir>/probabilities/<case>.nii.gz`` holds the class
probabilities (4D, last axis = class): a folder of its own, so that no case name can collide with
another case's output.

It runs on Lightning's machinery: loader workers read and preprocess the next cases while the
current one is inferred, ``Trainer.predict`` runs the model (on every GPU of every node with
``devices=N``, each case once), and a prediction writer writes each case as soon as it is done.
Symmetry maps are computed on the inference device, on the whole volume as in training.
``predict_report.json`` records, per case, the seconds spent reading, preprocessing, computing
symmetry maps, inferring and writing, and their sums. Inference runs in bf16 autocast where the
hardware has bf16 (``precision=auto``; :mod:`brats_lightning.precision`), symmetry maps, softmax
and everything after in fp32; ``precision=fp32`` forces fp32.

Files are written atomically (a temporary file renamed into place) and temporary files left by a
killed run are removed. A case counts as done only when every output asked for is there, so a rerun
after a kill, or with ``probabilities=true`` added, completes what is missing; ``overwrite=true``
redoes everything. A case that cannot be read (or whose folder is incomplete) is reported with its
reason and skipped, the others are still done, and the exit status is 1.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from brats_lightning.config import register_resolvers
from brats_lightning.data.datasets import first_item
from brats_lightning.data.layouts import BadCase, discover_cases
from brats_lightning.data.readers import CaseFiles
from brats_lightning.errors import ConfigError, OutputError, output_error
from brats_lightning.files import remove_stale_temporaries, write_text_atomic
from brats_lightning.load.predictor import load_predictor
from brats_lightning.modules.ensemble import EnsembleModule
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.options import command
from brats_lightning.precision import inference_dtype
from brats_lightning.predict.cases import STAGES, CaseDataset, CaseOutputs, layout_convention
from brats_lightning.predict.options import (
    check_output_dir,
    check_predict_options,
    cleanup_option,
    flips_option,
    trainer_options,
)
from brats_lightning.predict.predictor import Predictor
from brats_lightning.predict.writer import CaseWriter

__all__ = ["predict_dir", "main"]

log = logging.getLogger("brats_lightning.predict")


def predict_dir(cfg: DictConfig | dict) -> dict:
    """Predict every case of ``cfg.input_dir``.

    Returns:
        The report: ``done``, ``skipped`` (complete from an earlier run), ``failed`` (case id ->
        reason, bad case folders included), ``times_s`` (per case and stage) and ``totals_s``.
    """
    t0 = time.perf_counter()
    check_predict_options(cfg)
    ckpt = cfg["ckpt_path"]
    ckpt = ckpt if isinstance(ckpt, (str, Path)) else [str(c) for c in ckpt]
    flips = flips_option(cfg)
    model, data_config = load_predictor(ckpt, flips)
    if cfg.get("uncertainty", False):
        _check_members(model, flips)
    modalities = data_config.get("modalities") or ["flair", "t1", "t1c", "t2"]
    files = cfg.get("files") or None
    bad: list[BadCase] = []
    # a model trained with data.modality_dropout segments cases that lack sequences; another one cannot
    dropout = float(data_config.get("modality_dropout", 0.0) or 0.0)
    optional = modalities if dropout > 0 else ()
    cases = discover_cases(cfg["input_dir"], cfg.get("layout") or "auto", modalities, files, bad, optional)
    if not optional:
        hint = " (this model was not trained for missing sequences: data.modality_dropout)"
        bad = [replace(b, reason=b.reason + hint) if "missing" in b.reason and " image" in b.reason else b for b in bad]
    out_dir = Path(cfg["output_dir"])
    case_dirs = {Path(next(iter(c.images.values()))).parent for c in cases}
    check_output_dir(out_dir, sorted(case_dirs), "the case folder")
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        return _predict_cases(cfg, model, data_config, cases, bad, out_dir, t0)
    except BaseException:
        # a run that failed (or was interrupted) before writing anything leaves no empty folders behind
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _check_members(model: SegmentationModule, flips: list[str] | None) -> None:
    """``uncertainty=true`` promises the members' agreement: it needs two members (models x test-time flips).

    Raises:
        ConfigError: one model without flips.
    """
    models = len(model.members) if isinstance(model, EnsembleModule) else 1
    passes = 1 + len(flips if flips is not None else getattr(model, "tta_flips", None) or [])
    if models * passes < 2:
        raise ConfigError(
            "uncertainty=true: one model without test-time flips is one member, and the agreement of members it "
            "promises needs two: give an ensemble or a cross-validation run as ckpt_path, or tta=true"
        )


def _predict_cases(
    cfg: DictConfig | dict,
    model: SegmentationModule,
    data_config: dict,
    cases: list[CaseFiles],
    bad: list[BadCase],
    out_dir: Path,
    t0: float,
) -> dict:
    """:func:`predict_dir` once the model is loaded and the cases found (see there)."""
    want_probs = bool(cfg.get("probabilities", False))
    want_unc = bool(cfg.get("uncertainty", False))
    _prepare_output_dir(out_dir, want_probs, want_unc)
    skipped = (
        []
        if cfg.get("overwrite", False)
        else [c.case_id for c in cases if CaseOutputs.of(out_dir, c.case_id, want_probs, want_unc).done()]
    )
    todo = [c for c in cases if c.case_id not in skipped]
    writer = CaseWriter(out_dir, data_config, cleanup_option(cfg, model))
    options = trainer_options(cfg)
    dtype = inference_dtype(str(cfg.get("precision", "auto")), "cuda" if options["accelerator"] == "gpu" else "cpu")
    rank_zero, stopped = True, None
    report = writer.report()
    if todo:
        trainer = pl.Trainer(
            **options,
            logger=False,
            callbacks=[writer],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=True,
            precision="bf16-mixed" if dtype == torch.bfloat16 else "32-true",
        )
        try:
            trainer.predict(
                Predictor(model, data_config, cfg.get("batch_size", 8), want_probs, want_unc),
                _case_loader(cfg, todo, data_config, options["accelerator"]),
                return_predictions=False,
            )
        except OutputError as e:  # the first full-disk error: no later case is tried
            stopped = e
        rank_zero = trainer.is_global_zero
        report = writer.report() if stopped else _merge_ranks(trainer, out_dir, writer.report())
    report = _complete_report(report, skipped, bad, todo, stopped, dtype, t0)
    if rank_zero:
        stopped = _write_report(out_dir, report) or stopped
    if stopped is not None:
        raise OutputError(
            f"{stopped} (stopped at the first full-disk error: {len(report['done'])} case(s) written, "
            f"{len(report.get('not_attempted', []))} not attempted; free some space and run again, complete cases "
            "are skipped)"
        )
    return report


def _prepare_output_dir(out_dir: Path, probabilities: bool, uncertainty: bool) -> None:
    """Create the output folders; remove an earlier report (whatever happens next, no report claims more than is
    on disk) and the temporary files of a run that was stopped while writing them."""
    target = out_dir  # what is being made or removed, named if that fails
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, wanted in (("probabilities", probabilities), ("uncertainty", uncertainty)):
            if wanted:
                target = out_dir / name
                target.mkdir(exist_ok=True)
        target = out_dir / "predict_report.json"
        target.unlink(missing_ok=True)
    except OSError as e:
        raise output_error(e, target) from None
    for folder in (out_dir, out_dir / "probabilities", out_dir / "uncertainty"):
        for p in remove_stale_temporaries(folder):
            log.info("Removed %s, left by a run that was stopped while writing it", p)


def _file_size_limited() -> bool:
    """Whether this process has a file-size limit (``ulimit -f``)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return soft != resource.RLIM_INFINITY


def _case_loader(cfg: DictConfig | dict, todo: list[CaseFiles], data_config: dict, accelerator: str) -> DataLoader:
    """The cases, read and preprocessed by loader workers while the model infers (one worker on a CPU)."""
    files = cfg.get("files") or None
    asked = cfg.get("output_convention") or "auto"
    conventions = [asked if asked != "auto" else layout_convention(c, files, data_config) for c in todo]
    workers = cfg.get("num_workers", "auto")
    if workers == "auto":
        workers = 1 if accelerator == "cpu" else 2
    if workers and _file_size_limited():
        # loader workers hand tensors over through shared-memory files, which a file-size limit (ulimit -f) makes
        # fail in the worker, leaving this process waiting: the cases are read here instead
        log.info("A file-size limit (ulimit -f) is set: cases are read in this process (num_workers=0)")
        workers = 0
    return DataLoader(
        CaseDataset(todo, data_config, conventions),
        batch_size=1,
        collate_fn=first_item,
        num_workers=min(int(workers), len(todo)),
        prefetch_factor=1 if workers else None,
    )


def _complete_report(
    report: dict,
    skipped: list[str],
    bad: list[BadCase],
    todo: list[CaseFiles],
    stopped: OutputError | None,
    dtype: torch.dtype,
    t0: float,
) -> dict:
    """The writers' report with what the run skipped, failed on, did not attempt, and its times."""
    report["skipped"] = skipped
    report["precision"] = "bf16" if dtype == torch.bfloat16 else "fp32"
    if report.get("uncertainty"):  # the cases the members agree on least first: those to look at first
        scored = report["uncertainty"]
        report["review_first"] = sorted(scored, key=lambda c: (scored[c]["agreement"] or 1.0, c))
    report["failed"] = dict(sorted({**{b.case_id: b.reason for b in bad}, **report["failed"]}.items()))
    if stopped is not None:
        tried = set(report["done"]) | set(report["failed"])
        report["stopped"] = str(stopped)
        report["not_attempted"] = [c.case_id for c in todo if c.case_id not in tried]
    for b in bad:
        log.error("%s: skipped (%s)", b.case_id, b.reason)
    report["totals_s"] = {
        s: round(sum(t.get(s, 0.0) for t in report["times_s"].values()), 3) for s in (*STAGES, "total")
    }
    report["total_s"] = round(time.perf_counter() - t0, 3)
    return report


def _write_report(out_dir: Path, report: dict) -> OutputError | None:
    """Write ``predict_report.json``; a full disk is returned (the label maps on disk are complete), not raised."""
    full = None
    try:
        write_text_atomic(out_dir / "predict_report.json", json.dumps(report, indent=2) + "\n")
    except OSError as e:
        error = output_error(e, out_dir / "predict_report.json")
        if not isinstance(error, OutputError):
            raise
        full = error
        log.error("%s (the report is not written; the label maps on disk are complete)", full)
    log.info(
        "Predicted %d cases, skipped %d complete, %d failed, into %s (%.1f s)",
        len(report["done"]),
        len(report["skipped"]),
        len(report["failed"]),
        out_dir,
        report["total_s"],
    )
    return full


def _merge_ranks(trainer: pl.Trainer, out_dir: Path, mine: dict) -> dict:
    """Every rank's report, merged (each rank wrote the cases its sampler gave it)."""
    if trainer.world_size <= 1:
        return mine
    part = out_dir / f".predict_report.rank{trainer.global_rank}.json"
    write_text_atomic(part, json.dumps(mine))
    trainer.strategy.barrier("predict reports")
    merged: dict = {"done": [], "failed": {}, "times_s": {}}
    for r in range(trainer.world_size):
        other = json.loads((out_dir / f".predict_report.rank{r}.json").read_text())
        merged["done"] += other["done"]
        merged["failed"].update(other["failed"])
        merged["times_s"].update(other["times_s"])
        merged.setdefault("missing_modalities", {}).update(other.get("missing_modalities", {}))
        if "uncertainty" in other:
            merged.setdefault("uncertainty", {}).update(other["uncertainty"])
    trainer.strategy.barrier("predict reports read")
    part.unlink(missing_ok=True)
    merged["done"].sort()
    return merged


@command("predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see ``conf/predict.yaml``); exit status 1 when a case failed."""
    register_resolvers()
    report = predict_dir(cfg)
    if report["failed"]:
        print(f"{len(report['failed'])} case(s) failed (see predict_report.json):", file=sys.stderr)
        for case_id, why in report["failed"].items():
            print(f"FAILED {case_id}: {why}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
