"""Segment new scans: ``python -m brats_lightning.predict ckpt_path=... input_dir=... output_dir=...``.

For every case of ``input_dir`` (any supported layout) the scan is preprocessed exactly as during
training (the data configuration is stored in the checkpoint), segmented slice by slice with
whole-slice (fully convolutional) inference, optionally cleaned of small or flat blobs
(Havaei et al. Sec. 4), and written as ``<output_dir>/<case>.nii.gz`` in the input's exact grid
(shape, affine, orientation, header) and in the input's label convention (``output_convention``).
With ``probabilities=true``, ``<output_dir>/probabilities/<case>.nii.gz`` holds the class
probabilities (4D, last axis = class): a folder of its own, so that no case name can collide with
another case's output.

Files are written atomically (a temporary file renamed into place) and temporary files left by a
killed run are removed. A case counts as done only when every output asked for is there, so a rerun
after a kill, or with ``probabilities=true`` added, completes what is missing; ``overwrite=true``
redoes everything. A case that cannot be read (or whose folder is incomplete) is reported with its
reason and skipped, the others are still done, and the exit status is 1. A report of every case
lands in ``<output_dir>/predict_report.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import torch
from omegaconf import DictConfig

from brats_lightning.checkpoint import load_module
from brats_lightning.config import config_dir, register_resolvers
from brats_lightning.data.io import BadCase, CaseFiles, discover_cases, get_layout
from brats_lightning.data.labels import CONVENTIONS, convert, get_convention
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig, crop, preprocess_case, uncrop
from brats_lightning.errors import ConfigError, UserError, cli
from brats_lightning.inference import predict_volume
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.postprocess import remove_small_components
from brats_lightning.utils import atomic_path, remove_stale_temporaries, write_text_atomic

__all__ = ["load_model", "CaseOutputs", "predict_case", "predict_dir", "main"]

log = logging.getLogger("brats_lightning.predict")


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationModule, dict]:
    """Rebuild a trained model (eval mode, on ``device``) and its data configuration from a checkpoint.

    Only brats_lightning's own model classes can be rebuilt (see :mod:`brats_lightning.checkpoint`).

    Raises:
        CheckpointError: missing, unreadable or foreign checkpoint, or weights that do not fit.
    """
    model, data_config = load_module(ckpt_path)
    return model.to(device).eval(), data_config


@dataclass(frozen=True)
class CaseOutputs:
    """Where the outputs of one case go, and whether they are all there.

    Attributes:
        labels: ``<output_dir>/<case>.nii.gz``.
        probabilities: ``<output_dir>/probabilities/<case>.nii.gz`` when asked for, else ``None``.
    """

    labels: Path
    probabilities: Path | None

    @classmethod
    def of(cls, out_dir: Path, case_id: str, probabilities: bool) -> CaseOutputs:
        probs = out_dir / "probabilities" / f"{case_id}.nii.gz" if probabilities else None
        return cls(out_dir / f"{case_id}.nii.gz", probs)

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.labels, self.probabilities) if p is not None]

    def done(self) -> bool:
        """Every output asked for exists."""
        return all(p.is_file() for p in self.paths)


def check_predict_options(cfg: DictConfig | dict) -> None:
    """Reject options that cannot work before the model is loaded or any case read.

    Raises:
        ConfigError: the message names the option.
        MissingMandatoryValue: ``ckpt_path``, ``input_dir`` or ``output_dir`` was not given.
    """
    for key in ("ckpt_path", "input_dir", "output_dir"):
        _ = cfg[key]  # a missing ??? option raises here, before anything is loaded
    conv = cfg.get("output_convention") or "auto"
    if conv != "auto":
        try:
            get_convention(conv)
        except KeyError:
            raise ConfigError(
                f"output_convention={conv!r}: expected auto or one of {sorted(CONVENTIONS)} (or an edition year)"
            ) from None
    bs = cfg.get("batch_size", 8)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {bs!r}")
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}, but no CUDA device is available here (use device=auto or cpu)")


def _write_nifti(arr: np.ndarray, affine: np.ndarray, header, path: Path) -> None:
    """Save ``arr`` next to ``path`` under a temporary name, then rename it into place (atomic)."""
    img = nib.Nifti1Image(arr, affine, header)
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


@torch.no_grad()
def predict_case(
    model: SegmentationModule,
    case: CaseFiles,
    data_config: dict,
    output_convention: str,
    batch_size: int = 8,
    postprocess: dict | None = None,
    probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, object]:
    """Segment one case.

    Returns:
        ``(labels, probabilities, volume)``: labels in the files' voxel order and ``output_convention``,
        probabilities ``(X, Y, Z, K)`` in the files' voxel order (``None`` unless asked for: the full-grid
        map is K float32 volumes), and the loaded volume (geometry).
    """
    conv = get_convention(data_config.get("convention", model.convention.name))
    prep = PreprocessConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data_config.get("preprocess", {}).items()}
    )
    sym = SymmetryConfig(**data_config.get("symmetry", {"enabled": False}))
    pre = preprocess_case(replace(case, label=None), conv, prep, sym)
    device = model.device
    image = torch.from_numpy(np.ascontiguousarray(crop(pre.image, pre.box).transpose(3, 0, 1, 2))).to(device)
    mask = torch.from_numpy(np.ascontiguousarray(crop(pre.mask, pre.box).transpose(2, 0, 1))).to(device)
    probs = predict_volume(model.predict_slices, image, batch_size, mask)  # (Z, K, X, Y)
    classes = probs.argmax(1).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    classes = uncrop(classes, pre.box, pre.mask.shape)
    if postprocess:
        classes = remove_small_components(classes, pre.volume.spacing, **postprocess)
    out_conv = get_convention(output_convention)
    labels = out_conv.from_internal(convert(classes, conv, out_conv))
    vol = pre.volume
    if not probabilities:
        return vol.to_original(labels), None, vol
    p = probs.permute(1, 2, 3, 0).cpu().numpy()  # (K, X, Y, Z) cropped
    full = np.zeros((p.shape[0], *pre.mask.shape), dtype=np.float32)
    full[0] = 1.0  # background outside the brain's box
    full[(slice(None), *[slice(a, b) for a, b in pre.box])] = p
    return vol.to_original(labels), np.moveaxis(vol.to_original(full), 0, -1), vol


def predict_dir(cfg: DictConfig | dict) -> dict:
    """Predict every case of ``cfg.input_dir``.

    Returns:
        The report: ``done``, ``skipped`` (complete from an earlier run), ``failed`` (case id ->
        reason, bad case folders included) and ``times_s``.
    """
    t0 = time.perf_counter()
    check_predict_options(cfg)
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, data_config = load_model(cfg["ckpt_path"], device)
    modalities = data_config.get("modalities") or ["flair", "t1", "t1c", "t2"]
    layout = cfg.get("layout") or "auto"
    files = cfg.get("files") or None
    bad: list[BadCase] = []
    cases = discover_cases(cfg["input_dir"], layout, modalities, files, problems=bad)
    out_dir = Path(cfg["output_dir"])
    want_probs = bool(cfg.get("probabilities", False))
    report: dict = {"done": [], "skipped": [], "failed": {b.case_id: b.reason for b in bad}, "times_s": {}}
    for b in bad:
        log.error("%s: skipped (%s)", b.case_id, b.reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    if want_probs:
        (out_dir / "probabilities").mkdir(exist_ok=True)
    for folder in (out_dir, out_dir / "probabilities"):
        for p in remove_stale_temporaries(folder):
            log.info("Removed %s, left by a run that was stopped while writing it", p)
    post = dict(cfg.get("postprocess_options") or {}) if cfg.get("postprocess") else None

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]Predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[case]}"),
    ) as bar:
        task = bar.add_task("predict", total=len(cases), case="")
        for case in cases:
            bar.update(task, case=case.case_id)
            outputs = CaseOutputs.of(out_dir, case.case_id, want_probs)
            if outputs.done() and not cfg.get("overwrite", False):
                report["skipped"].append(case.case_id)
                bar.advance(task)
                continue
            t = time.perf_counter()
            try:
                out_conv = cfg.get("output_convention") or "auto"
                if out_conv == "auto":
                    out_conv = _layout_convention(case, files, data_config)
                labels, probs, vol = predict_case(
                    model, case, data_config, out_conv, cfg.get("batch_size", 8), post, want_probs
                )
                # probabilities first: a case is done when its label map exists with everything asked for
                if outputs.probabilities is not None:
                    _write_nifti(probs.astype(np.float32), vol.affine, vol.header, outputs.probabilities)
                _write_nifti(labels.astype(np.uint8), vol.affine, vol.header, outputs.labels)
                report["done"].append(case.case_id)
                report["times_s"][case.case_id] = round(time.perf_counter() - t, 3)
            except (UserError, OSError) as e:
                report["failed"][case.case_id] = str(e)
                log.error("%s: skipped (%s)", case.case_id, e)
            bar.advance(task)
    report["failed"] = dict(sorted(report["failed"].items()))
    report["total_s"] = round(time.perf_counter() - t0, 3)
    write_text_atomic(out_dir / "predict_report.json", json.dumps(report, indent=2) + "\n")
    log.info(
        "Predicted %d cases, skipped %d complete, %d failed, into %s (%.1f s)",
        len(report["done"]),
        len(report["skipped"]),
        len(report["failed"]),
        out_dir,
        report["total_s"],
    )
    return report


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
