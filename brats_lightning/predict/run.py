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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import nibabel as nib
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from brats_lightning.config import config_dir, register_resolvers
from brats_lightning.data.datasets import first_item
from brats_lightning.data.labels import CONVENTIONS, convert, get_convention
from brats_lightning.data.layouts import BadCase, discover_cases, get_layout
from brats_lightning.data.preprocess import (
    PreprocessConfig,
    SymmetryConfig,
    preprocess_case,
    symmetry_channels,
    uncrop,
)
from brats_lightning.data.readers import CaseFiles
from brats_lightning.errors import ConfigError, OutputError, UserError, cli, disk_full
from brats_lightning.files import atomic_path, remove_stale_temporaries, write_text_atomic
from brats_lightning.inference.cleanup import apply_cleanup
from brats_lightning.inference.flips import tta_flips
from brats_lightning.inference.volume import predict_volume
from brats_lightning.load.predictor import load_predictor
from brats_lightning.modules.ensemble import EnsembleModule
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.precision import inference_dtype
from brats_lightning.schema import PostprocessOptions, validate

__all__ = ["CaseOutputs", "CaseDataset", "Predictor", "CaseWriter", "predict_dir", "main"]

log = logging.getLogger("brats_lightning.predict.run")

#: the stages of a case whose seconds ``predict_report.json`` records
STAGES = ("read", "preprocess", "symmetry", "inference", "write")


@dataclass(frozen=True)
class CaseOutputs:
    """Where the outputs of one case go, and whether they are all there.

    Attributes:
        labels: ``<output_dir>/<case>.nii.gz``.
        probabilities: ``<output_dir>/probabilities/<case>.nii.gz`` when asked for, else ``None``.
        uncertainty: ``<output_dir>/uncertainty/<case>.nii.gz`` when asked for, else ``None``.
    """

    labels: Path
    probabilities: Path | None
    uncertainty: Path | None = None

    @classmethod
    def of(cls, out_dir: Path, case_id: str, probabilities: bool, uncertainty: bool = False) -> CaseOutputs:
        probs = out_dir / "probabilities" / f"{case_id}.nii.gz" if probabilities else None
        unc = out_dir / "uncertainty" / f"{case_id}.nii.gz" if uncertainty else None
        return cls(out_dir / f"{case_id}.nii.gz", probs, unc)

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.labels, self.probabilities, self.uncertainty) if p is not None]

    def done(self) -> bool:
        """Every output asked for exists."""
        return all(p.is_file() for p in self.paths)


def _configs(data_config: dict) -> tuple[Any, PreprocessConfig, SymmetryConfig]:
    conv = get_convention(data_config.get("convention", "brats2017"))
    prep = PreprocessConfig.from_dict(data_config.get("preprocess", {}))
    sym = SymmetryConfig(**data_config.get("symmetry", {"enabled": False}))
    return conv, prep, sym


class CaseDataset(Dataset):
    """The cases to predict, read and preprocessed (without symmetry maps) in loader workers.

    An item is a dict: ``image`` ``(Z, C, X, Y)`` float32 of the whole RAS volume, ``mask``, the
    geometry to write the result back (``volume``: affine, header, orientation), the crop ``box``,
    ``timings`` of reading and preprocessing, or ``error`` when the case cannot be used.
    """

    def __init__(self, cases: list[CaseFiles], data_config: dict, output_conventions: list[str]) -> None:
        self.cases = cases
        self.data_config = data_config
        self.output_conventions = output_conventions

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        case = self.cases[i]
        conv, prep, sym = _configs(self.data_config)
        item: dict[str, Any] = {"case_id": case.case_id, "output_convention": self.output_conventions[i]}
        try:
            pre = preprocess_case(replace(case, label=None), conv, prep, replace(sym, enabled=False))
        except UserError as e:
            return {**item, "error": str(e)}
        vol = pre.volume
        modalities = list(self.data_config.get("modalities") or vol.modalities)
        image = pre.image
        missing = [m for m in modalities if m not in vol.modalities]
        if missing:  # a model trained with data.modality_dropout: the missing sequences are zeros, as in training
            image = np.zeros((len(modalities), *pre.image.shape[1:]), np.float32)
            for c, m in enumerate(modalities):
                if m in vol.modalities:
                    image[c] = pre.image[list(vol.modalities).index(m)]
        item.update(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(3, 0, 1, 2))),
            mask=torch.from_numpy(np.ascontiguousarray(pre.mask.transpose(2, 0, 1))),
            box=pre.box,
            spacing=vol.spacing,
            modalities=modalities,
            missing=missing,
            volume=replace(vol, image=np.empty(0, np.float32), label=None, mask=None),
            timings=pre.timings,
        )
        return item


class Predictor(pl.LightningModule):
    """Whole-case inference of a trained model: symmetry maps on the device, then the net, slice batch by slice batch.

    Args:
        model: the trained model.
        data_config: its data configuration (from the checkpoint).
        batch_size: slices per forward pass.
        probabilities: also return the class probabilities.
        uncertainty: also return the voxel-wise uncertainty and the members' agreement
            (:mod:`brats_lightning.inference.uncertainty`; members: an ensemble's models times the test-time flips).
    """

    def __init__(
        self,
        model: SegmentationModule,
        data_config: dict,
        batch_size: int = 8,
        probabilities: bool = False,
        uncertainty: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.prepare_for_inference()
        self.data_config = data_config
        self.batch_size = batch_size
        self.probabilities = probabilities
        self.uncertainty = uncertainty

    def members(self) -> list:
        """The predictions averaged: ``(N, C, H, W)`` slices -> probabilities, one per model and flip."""
        if not isinstance(self.model, EnsembleModule):
            return [self.model.predict_slices]
        out: list = []
        for m in self.model._members():
            out.append(m.predict_slices)
            for dims in self.model.flips:
                out.append(lambda x, f=m.predict_slices, d=dims: f(x.flip(d)).flip(d))
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if "error" in batch:
            return batch
        timings = dict(batch["timings"])
        _, _, sym = _configs(self.data_config)
        image, mask = batch["image"], batch["mask"]
        t0 = time.perf_counter()
        if sym.enabled:
            present = [m for m in batch["modalities"] if m not in batch.get("missing", [])]
            if sym.axis_modality not in present:  # the axis is found on another sequence when T1 is missing
                sym = replace(sym, axis_modality=present[0])
            with torch.autocast(self.device.type, enabled=False):
                maps, _ = symmetry_channels(image.float(), mask, batch["modalities"], sym)
            for c, m in enumerate(batch["modalities"]):
                if m in batch.get("missing", []):  # zeroed with its image, as data.modality_dropout trains
                    maps[:, c] = 0
            image = torch.cat([image, maps], dim=1)
        _sync(self.device)
        t1 = time.perf_counter()
        (x0, x1), (y0, y1), (z0, z1) = batch["box"]
        # the crop of training: the brain's box; (Z, C, X, Y) slices
        box_image, box_mask = image[z0:z1, :, x0:x1, y0:y1], mask[z0:z1, x0:x1, y0:y1]
        context = int(self.data_config.get("context_slices", 0))
        extra = {}
        if not self.uncertainty:
            probs = predict_volume(self.model.predict_slices, box_image, self.batch_size, box_mask, context)
        else:  # member by member: the same average, and how much they agree
            from brats_lightning.inference.uncertainty import agreement, normalised_entropy

            total, member_classes = None, []
            for fn in self.members():
                p = predict_volume(fn, box_image, self.batch_size, box_mask, context)
                total = p if total is None else total + p
                member_classes.append(self.model.decide(p).to(torch.uint8).cpu())
            assert total is not None
            probs = total / len(member_classes)
            unc = normalised_entropy(probs)
            score = agreement(member_classes, self.model.convention)
            tumour = self.model.decide(probs) > 0
            extra = {
                "uncertainty": unc.float().cpu(),
                "uncertainty_score": {
                    "agreement": None if score is None else round(score, 4),
                    "members": len(member_classes),
                    "mean_uncertainty_tumour": round(float(unc[tumour].mean()), 4) if bool(tumour.any()) else 0.0,
                },
            }
        classes = self.model.decide(probs).to(torch.uint8)
        out = {**batch, "classes": classes.cpu(), "image": None, "mask": mask.cpu(), **extra}
        if self.probabilities:
            out["probs"] = probs.float().cpu()
        _sync(self.device)
        timings.update(symmetry=t1 - t0, inference=time.perf_counter() - t1)
        out["timings"] = timings
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CaseWriter(BasePredictionWriter):
    """Writes every predicted case (labels, and probabilities when asked for) and keeps this rank's report.

    Args:
        out_dir: the output folder.
        data_config: the model's data configuration (label convention).
        postprocess: Havaei et al.'s connected-component clean-up options, or ``None``.
    """

    def __init__(self, out_dir: Path, data_config: dict, postprocess: dict | None = None) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.data_config = data_config
        self.postprocess = postprocess
        self.done: list[str] = []
        self.failed: dict[str, str] = {}
        self.times: dict[str, dict[str, float]] = {}
        self.missing: dict[str, list[str]] = {}
        self.uncertainty: dict[str, dict] = {}

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        case_id = prediction["case_id"]
        if "error" in prediction:
            self.failed[case_id] = prediction["error"]
            log.error("%s: skipped (%s)", case_id, prediction["error"])
            return
        t0 = time.perf_counter()
        try:
            self._write(prediction)
        except OutputError as e:  # a full disk: every later case would fail too; stop here
            self.failed[case_id] = str(e)
            raise
        except (UserError, OSError) as e:
            self.failed[case_id] = str(e)
            log.error("%s: skipped (%s)", case_id, e)
            return
        timings = {**prediction["timings"], "write": time.perf_counter() - t0}
        timings["total"] = sum(timings[s] for s in STAGES if s in timings)
        self.times[case_id] = {k: round(v, 3) for k, v in timings.items()}
        if prediction.get("missing"):
            self.missing[case_id] = list(prediction["missing"])
        if "uncertainty_score" in prediction:
            self.uncertainty[case_id] = prediction["uncertainty_score"]
        self.done.append(case_id)

    def _write(self, p: dict) -> None:
        conv, _, _ = _configs(self.data_config)
        vol, box = p["volume"], p["box"]
        ras_shape = tuple(p["mask"].shape[1:]) + (p["mask"].shape[0],)  # (X, Y, Z)
        classes = uncrop(p["classes"].permute(1, 2, 0).numpy(), box, ras_shape)
        classes = apply_cleanup(classes, p["spacing"], conv, self.postprocess)
        out_conv = get_convention(p["output_convention"])
        labels = out_conv.from_internal(convert(classes, conv, out_conv))
        outputs = CaseOutputs.of(self.out_dir, p["case_id"], "probs" in p, "uncertainty" in p)
        # probabilities first: a case is done when its label map exists with everything asked for
        if outputs.uncertainty is not None:
            unc = uncrop(p["uncertainty"].permute(1, 2, 0).numpy().astype(np.float32), box, ras_shape)
            _write_nifti(vol.to_original(unc).astype(np.float32), vol.affine, vol.header, outputs.uncertainty)
        if outputs.probabilities is not None:
            probs = p["probs"].permute(1, 2, 3, 0).numpy()  # (K, X, Y, Z) in the box
            full = np.zeros((probs.shape[0], *ras_shape), dtype=np.float32)
            full[0] = 1.0  # background outside the brain's box
            inside = (slice(None), *(slice(a, b) for a, b in box))
            full[inside] = probs
            _write_nifti(np.moveaxis(vol.to_original(full), 0, -1), vol.affine, vol.header, outputs.probabilities)
        _write_nifti(vol.to_original(labels).astype(np.uint8), vol.affine, vol.header, outputs.labels)

    def report(self) -> dict:
        out = {"done": self.done, "failed": self.failed, "times_s": self.times, "missing_modalities": self.missing}
        if self.uncertainty:
            out["uncertainty"] = self.uncertainty
        return out


def _write_nifti(arr: np.ndarray, affine: np.ndarray, header, path: Path) -> None:
    """Save ``arr`` next to ``path`` under a temporary name, then rename it into place (atomic).

    Raises:
        OutputError: the disk is full (or the quota spent); names ``path``, and nothing is left there.
    """
    img = nib.Nifti1Image(arr, affine, header)
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm")
    try:
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
    except OSError as e:
        full = disk_full(e, path)
        if full is None:
            raise
        raise full from e


def check_predict_options(cfg: DictConfig | dict) -> None:
    """Reject options that cannot work before the model is loaded or any case read.

    Raises:
        ConfigError: the message names the option.
        MissingMandatoryValue: ``ckpt_path``, ``input_dir`` or ``output_dir`` was not given.
    """
    for key in ("ckpt_path", "input_dir", "output_dir"):
        _ = cfg[key]  # a missing ??? option raises here, before anything is loaded
    _check_output_dir(Path(str(cfg["output_dir"])), [Path(str(cfg["input_dir"]))])
    conv = cfg.get("output_convention") or "auto"
    if conv != "auto":
        try:
            get_convention(conv)
        except KeyError:
            raise ConfigError(
                f"output_convention={conv!r}: expected auto or one of {sorted(CONVENTIONS)} (or an edition year)"
            ) from None
    try:
        tta_flips(list(cfg.get("tta_flips") or []))
    except ValueError as e:
        raise ConfigError(f"tta_flips: {e}") from None
    _flips(cfg)
    _auto_or_bool(cfg, "postprocess")
    options = cfg.get("postprocess_options") or {}
    options = OmegaConf.to_container(options) if isinstance(options, DictConfig) else options
    validate(PostprocessOptions, options, "postprocess_options", ConfigError)
    bs = cfg.get("batch_size", 8)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {bs!r}")
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}, but no CUDA device is available here (use device=auto or cpu)")
    workers = cfg.get("num_workers", "auto")
    if workers != "auto" and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"num_workers must be auto or an integer >= 0, got {workers!r}")
    try:
        inference_dtype(str(cfg.get("precision", "auto")), "cuda" if device.startswith("cuda") else "cpu")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_output_dir(out_dir: Path, inputs: Sequence[Path], what: str = "input_dir") -> None:
    """``output_dir`` must be a folder (or not exist yet) outside the input folder and every case folder.

    Raises:
        ConfigError: ``output_dir`` is a file, or equal to or inside ``input_dir`` or a case folder
            (predictions would be written into the data set, and read back as cases).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output_dir={out_dir}: is an existing file, not a folder; give a folder for the predictions")
    out = out_dir.resolve()
    for folder in inputs:
        inp = folder.resolve()
        if out == inp or out.is_relative_to(inp):
            where = "is" if out == inp else "is inside"
            raise ConfigError(
                f"output_dir={out_dir} {where} {what} {folder}: predictions would be written into the data set; "
                "choose a folder outside it"
            )


def _trainer_options(cfg: DictConfig | dict) -> dict:
    device = str(cfg.get("device", "auto"))
    devices = cfg.get("devices", 1)
    if device == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        accelerator = "gpu"
        if ":" in device:
            devices = [int(device.split(":")[1])]
    else:
        accelerator = "cpu"
    nodes = int(cfg.get("num_nodes", 1))
    strategy = "ddp" if (isinstance(devices, int) and devices > 1) or devices == -1 or nodes > 1 else "auto"
    return {"accelerator": accelerator, "devices": devices, "num_nodes": nodes, "strategy": strategy}


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
    flips = _flips(cfg)
    model, data_config = load_predictor(ckpt, flips)
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
    _check_output_dir(out_dir, sorted(case_dirs), "the case folder")
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        return _predict_cases(cfg, model, data_config, cases, bad, out_dir, t0)
    except BaseException:
        # a run that failed (or was interrupted) before writing anything leaves no empty folders behind
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


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
    files = cfg.get("files") or None
    want_probs = bool(cfg.get("probabilities", False))
    want_unc = bool(cfg.get("uncertainty", False))
    if want_unc and not isinstance(model, EnsembleModule):
        log.warning(
            "uncertainty=true with one model and no test-time flips: the map is the model's own entropy, and "
            "there is no agreement to rank cases by (give a cross-validation run, or tta=true)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if want_probs:
        (out_dir / "probabilities").mkdir(exist_ok=True)
    if want_unc:
        (out_dir / "uncertainty").mkdir(exist_ok=True)
    # an earlier run's report goes first: whatever happens next, no report claims more than is on disk
    (out_dir / "predict_report.json").unlink(missing_ok=True)
    for folder in (out_dir, out_dir / "probabilities", out_dir / "uncertainty"):
        for p in remove_stale_temporaries(folder):
            log.info("Removed %s, left by a run that was stopped while writing it", p)
    skipped = [c.case_id for c in cases if CaseOutputs.of(out_dir, c.case_id, want_probs, want_unc).done()]
    if cfg.get("overwrite", False):
        skipped = []
    todo = [c for c in cases if c.case_id not in skipped]
    conventions = [
        (cfg.get("output_convention") or "auto")
        if (cfg.get("output_convention") or "auto") != "auto"
        else _layout_convention(c, files, data_config)
        for c in todo
    ]
    post = _postprocess(cfg, model)
    writer = CaseWriter(out_dir, data_config, post)
    options = _trainer_options(cfg)
    dtype = inference_dtype(str(cfg.get("precision", "auto")), "cuda" if options["accelerator"] == "gpu" else "cpu")
    workers = cfg.get("num_workers", "auto")
    if workers == "auto":
        workers = 1 if options["accelerator"] == "cpu" else 2
    rank_zero = True
    stopped: OutputError | None = None
    if todo:
        loader = DataLoader(
            CaseDataset(todo, data_config, conventions),
            batch_size=1,
            collate_fn=first_item,
            num_workers=min(int(workers), len(todo)),
            prefetch_factor=1 if workers else None,
        )
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
                loader,
                return_predictions=False,
            )
        except OutputError as e:  # the first full-disk error: no later case is tried
            stopped = e
        rank_zero = trainer.is_global_zero
        report = writer.report() if stopped else _merge_ranks(trainer, out_dir, writer.report())
    else:
        report = writer.report()
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
    if rank_zero:
        try:
            write_text_atomic(out_dir / "predict_report.json", json.dumps(report, indent=2) + "\n")
        except OSError as e:
            full = disk_full(e, out_dir / "predict_report.json")
            if full is None:
                raise
            stopped = stopped or full
            log.error("%s (the report is not written; the label maps on disk are complete)", full)
        log.info(
            "Predicted %d cases, skipped %d complete, %d failed, into %s (%.1f s)",
            len(report["done"]),
            len(report["skipped"]),
            len(report["failed"]),
            out_dir,
            report["total_s"],
        )
    if stopped is not None:
        raise OutputError(
            f"{stopped} (stopped at the first full-disk error: {len(report['done'])} case(s) written, "
            f"{len(report.get('not_attempted', []))} not attempted; free some space and run again, complete cases "
            "are skipped)"
        )
    return report


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


def _auto_or_bool(cfg: DictConfig | dict, key: str) -> str | bool:
    """Option ``key``: ``"auto"`` (the default), ``True`` or ``False``.

    Raises:
        ConfigError: any other value.
    """
    setting = cfg.get(key, "auto")
    if setting in ("auto", True, False, None, "true", "false"):
        return setting if setting == "auto" else setting in (True, "true")
    raise ConfigError(f"{key} must be auto, true or false, got {setting!r}")


def _flips(cfg: DictConfig | dict) -> list[str] | None:
    """The test-time flips asked for: ``None`` for ``tta=auto`` (those the checkpoint was tuned with)."""
    setting = _auto_or_bool(cfg, "tta")
    if setting == "auto":
        return None
    return list(cfg.get("tta_flips") or ["lr"]) if setting else []


def _postprocess(cfg: DictConfig | dict, model: SegmentationModule) -> dict | None:
    """The clean-up to apply: ``auto`` = what the model was trained and tested with (in its checkpoint)."""
    setting = _auto_or_bool(cfg, "postprocess")
    if setting == "auto":
        return dict(model.postprocess) if model.postprocess else None
    if not setting:
        return None
    options = cfg.get("postprocess_options") or {}
    options = OmegaConf.to_container(options) if isinstance(options, DictConfig) else dict(options)
    return validate(PostprocessOptions, options, "postprocess_options", ConfigError).model_dump()


def _layout_convention(case: CaseFiles, files: dict | None, data_config: dict) -> str:
    """The label convention of the input's layout (generic layouts keep the training convention)."""
    if case.layout in ("generic", ""):
        return data_config.get("convention", "brats2017")
    return get_layout(case.layout, files).convention


@hydra.main(config_path=config_dir(), config_name="predict", version_base="1.3")
@cli
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
