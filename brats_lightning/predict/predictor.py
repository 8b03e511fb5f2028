"""Whole-case inference in a Lightning ``predict_step``: symmetry maps on the device, then the model slice
batch by slice batch (and, with ``uncertainty=true``, member by member).
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from brats_lightning.data.preprocess import (
    symmetry_channels,
)
from brats_lightning.inference.uncertainty import agreement, normalised_entropy
from brats_lightning.inference.volume import predict_volume
from brats_lightning.modules.ensemble import EnsembleModule
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.predict.cases import data_configs

__all__ = ["Predictor"]


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
        _, _, sym = data_configs(self.data_config)
        image, mask = batch["image"], batch["mask"]
        t0 = time.perf_counter()
        if sym.enabled:
            present = [m for m in batch["modalities"] if m not in batch.get("missing", [])]
            if sym.axis_modality not in present:  # the axis is found on another sequence when T1 is missing
                sym = sym.replace(axis_modality=present[0])
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
