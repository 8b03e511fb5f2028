"""Out-of-fold inference: every case of a fold segmented by the fold model that never trained on it.

The class maps are saved before any clean-up, in ``<run>/oof/<case>.npz`` (with the test-time flips, without
them, and the variants the ablation measures), through a Lightning ``Trainer.predict``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from brats_lightning.crossval.options import CVOptions
from brats_lightning.data.cache import PreparedCase
from brats_lightning.data.channels import modality_channels
from brats_lightning.data.datasets import VolumeDataset, first_item
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.files import atomic_path, read_checkpoint
from brats_lightning.inference.flips import FLIPS
from brats_lightning.inference.uncertainty import agreement, normalised_entropy
from brats_lightning.load.checkpoint import load_module

__all__ = ["OutOfFold", "case_channels", "inference_seconds", "inference_trainer", "predict_out_of_fold"]


def inference_trainer(cfg: DictConfig, progress: bool) -> pl.Trainer:
    """A one-device Trainer for inference with the run's accelerator and precision, nothing written."""
    return pl.Trainer(
        accelerator=str(cfg.trainer.get("accelerator", "cpu")),
        devices=1,
        precision=cfg.trainer.get("precision", "32"),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
    )


def case_channels(data_config: dict) -> dict[str, list[int]]:
    """Modality -> its channels in a prepared case (image and symmetry map), before the 2.5D context is
    stacked: what a missing sequence zeroes in a case given to ``predict_case``.

    Examples:
        >>> case_channels({"modalities": ["flair", "t1"], "symmetry": {"enabled": True}, "context_slices": 1})
        {'flair': [0, 2], 't1': [1, 3]}
    """
    return modality_channels({**data_config, "context_slices": 0})


class OutOfFold(pl.LightningModule):
    """Segments prepared cases with a trained model and saves the class maps before any clean-up.

    ``classes``: with the test-time flips (what the run scores); ``classes_single``: the same weights
    without flips (free: the unflipped pass is part of the average); ``classes_raw``: the weights
    before averaging (``callbacks.ema``), without flips, when the checkpoint has them. The last two
    measure the flips and the weight averaging on the same trained models (the ablation).
    """

    def __init__(self, model: Any, raw: Any | None, opts: CVOptions, out_dir: Path, fold: int, channels: dict) -> None:
        super().__init__()
        self.model = model.prepare_for_inference()
        self.raw = raw.prepare_for_inference() if raw is not None else None
        self.flips = list(opts.tta_flips)
        self.opts, self.out_dir, self.fold = opts, out_dir, fold
        #: modality -> the input channels that carry it (images and symmetry maps)
        self.channels = channels

    def predict_step(self, batch: dict, batch_idx: int) -> None:

        item = {**batch, "image": batch["image"].float()}
        single = self.model.predict_case(item, [])
        total = single.clone()
        decide = self.model.decide
        members = [decide(single)] if self.opts.uncertainty else []
        for name in self.flips:  # the flipped case, flipped back: flip_average over the whole volume
            dims = FLIPS[name]
            flipped = {**item, "image": item["image"].flip(dims), "mask": item["mask"].flip([d - 1 for d in dims])}
            p = self.model.predict_case(flipped, []).flip(dims)
            total += p
            if self.opts.uncertainty:
                members.append(decide(p))
        probs = total / (1 + len(self.flips))
        arrays = {
            "classes": decide(probs).to(torch.uint8).cpu().numpy(),
            "classes_single": decide(single).to(torch.uint8).cpu().numpy(),
            "fold": np.array(self.fold),
        }
        if self.raw is not None:
            arrays["classes_raw"] = self.raw.decide(self.raw.predict_case(item, [])).to(torch.uint8).cpu().numpy()
        if self.opts.probabilities:
            arrays["probabilities"] = probs.to(torch.float16).cpu().numpy()
        if self.opts.uncertainty:
            arrays["uncertainty"] = normalised_entropy(probs).to(torch.float16).cpu().numpy()
            # the baseline a voxel map must beat: the averaged probability of the class decided
            arrays["max_probability"] = probs.max(1).values.to(torch.float16).cpu().numpy()
            score = agreement(members, self.model.convention)
            arrays["agreement"] = np.array(np.nan if score is None else score)
        for modality in self.opts.missing_modalities:
            image = item["image"].clone()
            image[:, self.channels[modality]] = 0
            missing = self.model.predict_case({**item, "image": image}, [])
            arrays[f"classes_missing_{modality}"] = decide(missing).to(torch.uint8).cpu().numpy()
        with atomic_path(self.out_dir / f"{batch['case_id']}.npz") as tmp:
            np.savez_compressed(tmp, **arrays)


def inference_seconds(
    cfg: DictConfig, data_config: dict, case: PreparedCase, opts: CVOptions, averaged: bool, scratch: Path
) -> float:
    """Seconds the out-of-fold inference of one case will take: measured once, before the first fold trains,
    with the untrained model of this run (the same passes: flips, and the raw weights beside the averaged ones)."""

    model = instantiate(cfg.model, _convert_="all")
    t0 = time.perf_counter()
    _predict_cases(model, copy.deepcopy(model) if averaged else None, [case], data_config, opts, scratch, cfg, -1)
    seconds = time.perf_counter() - t0
    for p in scratch.glob("*.npz"):
        p.unlink()
    scratch.rmdir()
    return seconds


def predict_out_of_fold(
    ckpt: Path, cases: list[PreparedCase], opts: CVOptions, out_dir: Path, cfg: DictConfig, fold: int
) -> None:
    """Segment ``cases`` with the fold's final checkpoint (test-time flips ``opts.tta_flips``) into ``out_dir``."""

    model, data_config = load_module(ckpt)
    raw = None
    current = read_checkpoint(ckpt).get("current_model_state")  # the weights before averaging (EMA)
    if opts.raw_weights and isinstance(current, dict) and current:
        raw = copy.deepcopy(model)
        try:
            raw.load_state_dict(current)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt}: its current_model_state does not fit the model ({e})") from e
    _predict_cases(model, raw, cases, data_config, opts, out_dir, cfg, fold)


def _predict_cases(
    model: Any,
    raw: Any | None,
    cases: list[PreparedCase],
    data_config: dict,
    opts: CVOptions,
    out_dir: Path,
    cfg: DictConfig,
    fold: int,
) -> None:

    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(opts.missing_modalities) - set(data_config.get("modalities") or [])
    if unknown:
        raise ConfigError(f"cv.missing_modalities: {sorted(unknown)} are not among data.modalities")
    context = int(data_config.get("context_slices", 0))
    loader = DataLoader(VolumeDataset(cases, context), batch_size=1, collate_fn=first_item)
    trainer = inference_trainer(cfg, progress=True)
    predictor = OutOfFold(model, raw, opts, out_dir, fold, case_channels(data_config))
    trainer.predict(predictor, loader, return_predictions=False)
