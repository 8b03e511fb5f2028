"""Writing predicted cases: label maps in the input's grid and label convention, probabilities and uncertainty
maps when asked for, every file atomically; and this rank's report of what was done.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from brats_lightning.data.labels import convert, get_convention
from brats_lightning.data.preprocess import (
    uncrop,
)
from brats_lightning.errors import OutputError, UserError, output_error
from brats_lightning.files import atomic_path
from brats_lightning.inference.cleanup import apply_cleanup
from brats_lightning.predict.cases import STAGES, CaseOutputs, data_configs

__all__ = ["CaseWriter", "write_nifti"]

log = logging.getLogger("brats_lightning.predict")


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
        conv, _, _ = data_configs(self.data_config)
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
            write_nifti(vol.to_original(unc).astype(np.float32), vol.affine, vol.header, outputs.uncertainty)
        if outputs.probabilities is not None:
            probs = p["probs"].permute(1, 2, 3, 0).numpy()  # (K, X, Y, Z) in the box
            full = np.zeros((probs.shape[0], *ras_shape), dtype=np.float32)
            full[0] = 1.0  # background outside the brain's box
            inside = (slice(None), *(slice(a, b) for a, b in box))
            full[inside] = probs
            write_nifti(np.moveaxis(vol.to_original(full), 0, -1), vol.affine, vol.header, outputs.probabilities)
        write_nifti(vol.to_original(labels).astype(np.uint8), vol.affine, vol.header, outputs.labels)

    def report(self) -> dict:
        out = {"done": self.done, "failed": self.failed, "times_s": self.times, "missing_modalities": self.missing}
        if self.uncertainty:
            out["uncertainty"] = self.uncertainty
        return out


def write_nifti(arr: np.ndarray, affine: np.ndarray, header, path: Path) -> None:
    """Save ``arr`` next to ``path`` under a temporary name, then rename it into place (atomic).

    Raises:
        OutputError: the disk is full (or the quota or file-size limit spent), or the folder is read-only or not
            ours to write; names ``path``, and nothing is left there.
    """
    img = nib.Nifti1Image(arr, affine, header)
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm")
    try:
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
    except OSError as e:
        error = output_error(e, path)  # a full disk, a size limit, a read-only or forbidden folder: named
        if error is e:
            raise
        raise error from e
