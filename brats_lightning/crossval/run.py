"""Cross-validation in one command, one budget, one folder: every case segmented by a model that never saw it.

``cross_validation: true`` (``experiment=real_fast``) turns a training run into a k-fold
cross-validation over all the cases (nnU-Net's practice, Isensee et al. 2021):

1. **Folds** come from the split file, stratified by site (:mod:`brats_lightning.data.groups`): every
   fold holds every site in proportion (``data.split=site``: one site per fold).
2. **One model per fold** is trained on the other folds, in ``<run>/fold_<k>/``, for its share of the
   wall-clock budget (``budget_minutes`` less ``reserve_minutes``, split evenly over the folds left,
   less the time its out-of-fold inference is expected to take). Nothing is chosen on the fold's own
   cases: the fold's model is its final weights (with ``callbacks.ema``: their moving average), not a
   best epoch picked on them.
3. **Out-of-fold predictions**: each fold's model segments its fold's cases (with the test-time
   flips ``cv.tta_flips``), saved as ``<run>/oof/<case>.npz``.
4. **The clean-up** (connected components of the tumour, and the BraTS rule that turns a small
   enhancing volume into necrosis) is chosen on the out-of-fold segmentations by region Dice and
   lesion-wise Dice together (:func:`choose_cleanup`). For the cross-validation figures, fold ``k``'s
   cases get the choice made on the other folds only (nested), so no choice was made on a case it
   is scored on; the final choice uses every fold.
5. **Cross-validation figures**: Dice, HD95, sensitivity, specificity, PPV and the lesion-wise
   columns of every case and region on its full grid, as ``evaluate`` computes them, in
   ``<run>/cv/`` (``per_case.csv``, ``summary.json``, ``summary.md``, ``folds.csv``: each case's fold
   and site; ``sites.md``: per-site means) and ``metrics.json`` (``cv/dice_wt``, ``cv/hd95_et``, ...).
6. **The final predictor** is the ensemble of the fold models (nnU-Net's choice; every case of the
   data set trained all but one of them): ``<run>/predictor.json`` lists their checkpoints, each of
   which carries the final clean-up and flips, so ``predict ckpt_path=<run>`` uses it as it is.
   With ``data.test_fraction > 0`` it is also tested on the held-out cases, which chose nothing
   (``test/...`` in ``metrics.json``, ``<run>/test/``).

Running the same command again with ``hydra.run.dir=<run>`` resumes a killed run in place: finished
folds are kept, an interrupted fold resumes from its ``last.ckpt``, and the budget already spent
is counted (``cv_state.json``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from brats_lightning.data.cache import PreparedCase
from brats_lightning.data.channels import modality_channels
from brats_lightning.data.labels import REGIONS, LabelConvention
from brats_lightning.data.preprocess import uncrop
from brats_lightning.errors import ConfigError
from brats_lightning.files import atomic_path, write_csv_atomic, write_text_atomic
from brats_lightning.load.checkpoint import PREDICTOR_FILE, predictor_checkpoints

__all__ = [
    "run_cross_validation",
    "cleanup_candidates",
    "et_rule_candidates",
    "choose_cleanup",
    "fold_seconds",
    "PREDICTOR_FILE",
]

log = logging.getLogger("brats_lightning.crossval.run")


#: seconds per case and pass assumed for out-of-fold inference before the first fold has measured it
#: (Shen et al.'s FCN on a BraTS brain box in bf16 on 2 CPU cores: about 5 s)
DEFAULT_INFERENCE_S = 6.0


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def fold_seconds(left_s: float, folds_left: int, inference_s: float, minimum_s: float = 30.0) -> float:
    """Training seconds of the next fold: an even share of what is left, less its inference.

    Example:
        >>> fold_seconds(3000.0, 5, 60.0)
        540.0
    """
    return max(minimum_s, left_s / max(1, folds_left) - inference_s)


def _inference_trainer(cfg: DictConfig, progress: bool) -> pl.Trainer:
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

    Example:
        >>> case_channels({"modalities": ["flair", "t1"], "symmetry": {"enabled": True}, "context_slices": 1})
        {'flair': [0, 2], 't1': [1, 3]}
    """
    return modality_channels({**data_config, "context_slices": 0})


# ------------------------------------------------------------------------------------------ clean-up


def cleanup_candidates(min_volumes_mm3: Sequence[float], largest_only: bool = True) -> list[dict]:
    """Clean-ups of the tumour's connected components compared on the out-of-fold cases, none first."""
    none = {"min_volume_mm3": 0.0, "min_slices": 0, "largest_only": False, "et_min_volume_mm3": 0.0}
    out = [none]
    out += [{**none, "min_volume_mm3": float(v), "min_slices": 1} for v in sorted(min_volumes_mm3)]
    if largest_only:
        out.append({**none, "largest_only": True})
    return out


def et_rule_candidates(base: dict, et_volumes_mm3: Sequence[float]) -> list[dict]:
    """``base`` with each threshold of the enhancing-to-necrosis rule (0 = off, first)."""
    off = {**base, "et_min_volume_mm3": 0.0}
    return [off] + [{**base, "et_min_volume_mm3": float(v)} for v in sorted(et_volumes_mm3)]


def choose_cleanup(scores: np.ndarray, folds: np.ndarray, use: np.ndarray) -> tuple[int, dict[str, Any]]:
    """The candidate that beats the first (no clean-up) by more than the folds' spread.

    Args:
        scores: ``(cases, candidates)`` score of every candidate on every case.
        folds: ``(cases,)`` the fold of every case.
        use: ``(cases,)`` boolean, the cases the choice may look at.

    Returns:
        The chosen index (0 when no candidate's mean gain over candidate 0 exceeds one standard
        error of its per-fold gains, the folds' spread) and the figures: per candidate the gain and
        its standard error.
    """
    kept = np.flatnonzero(use)
    fold_ids = sorted(set(folds[kept].tolist()))
    per_fold = np.stack([scores[kept[folds[kept] == f]].mean(0) for f in fold_ids])  # (F, candidates)
    gains = per_fold - per_fold[:, :1]
    mean = gains.mean(0)
    se = gains.std(0, ddof=1) / np.sqrt(len(fold_ids)) if len(fold_ids) > 1 else np.zeros_like(mean)
    eligible = [i for i in range(1, scores.shape[1]) if mean[i] > se[i] and mean[i] > 0]
    best = max(eligible, key=lambda i: mean[i]) if eligible else 0
    return best, {"gain": mean.tolist(), "se": se.tolist(), "folds": len(fold_ids)}


# ------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class CVOptions:
    """``cv.*`` of the config (``conf/experiment/real_fast.yaml``).

    Attributes:
        tta_flips: test-time flips of the out-of-fold predictions and of the final predictor.
        min_volumes_mm3: component-volume thresholds of the clean-up compared.
        largest_only: also compare keeping only the largest tumour component.
        et_volumes_mm3: thresholds of the enhancing-to-necrosis rule compared.
        tune_max_cases: score the clean-ups on at most this many out-of-fold cases (spread over the folds).
        probabilities: also keep the out-of-fold class probabilities (float16) in ``oof/``.
        workers: processes scoring cases (``0``: this machine's cores).
        fold_minutes: train every fold exactly this long instead of its share of the budget (the
            ablation: every setting trains the same minutes, whatever its inference costs).
        raw_weights: also segment with the weights before averaging (``callbacks.ema``), to measure
            the averaging (``cv_raw`` in ``metrics.json``; one more pass per case).
        uncertainty: also keep, per case, the voxel-wise uncertainty of the test-time flips (normalised
            entropy of their mean) and their agreement (:mod:`brats_lightning.inference.uncertainty`).
        missing_modalities: also segment every case with each of these modalities missing (its image
            and symmetry-map channels zeroed, as ``data.modality_dropout`` trains), one pass each
            (``cv_missing_<modality>`` in ``metrics.json``).
    """

    tta_flips: tuple[str, ...] = ("lr",)
    min_volumes_mm3: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)
    largest_only: bool = True
    et_volumes_mm3: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0)
    tune_max_cases: int = 300
    probabilities: bool = False
    workers: int = 0
    fold_minutes: float | None = None
    raw_weights: bool = False
    uncertainty: bool = False
    missing_modalities: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, node: Any) -> CVOptions:
        from brats_lightning.inference.flips import tta_flips

        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        if not isinstance(raw, dict):
            raise ConfigError(f"cv must be a mapping of options, got {raw!r}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"cv: unknown option(s) {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        opts: dict[str, Any] = {str(k): tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        out = cls(**opts)
        try:
            tta_flips(out.tta_flips)
        except ValueError as e:
            raise ConfigError(f"cv.tta_flips: {e}") from None
        if any(float(v) <= 0 for v in (*out.min_volumes_mm3, *out.et_volumes_mm3)):
            raise ConfigError("cv.min_volumes_mm3 and cv.et_volumes_mm3 must be positive volumes")
        if out.fold_minutes is not None and not float(out.fold_minutes) > 0:
            raise ConfigError(f"cv.fold_minutes must be positive minutes (or null), got {out.fold_minutes!r}")
        return out


@dataclass
class _State:
    """``cv_state.json``: what a killed run had done (resumed in place)."""

    path: Path
    spent_s: float = 0.0
    folds: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: seconds of out-of-fold inference per case, measured before the first fold
    inference_s: float = 0.0

    @classmethod
    def load(cls, out: Path) -> _State:
        from brats_lightning.errors import UserError
        from brats_lightning.schema import read_json

        path = out / "cv_state.json"
        if not path.is_file():
            return cls(path)
        try:
            doc = read_json(path, "cross-validation state")
        except UserError as e:
            log.warning("%s; starting the cross-validation afresh", e)
            return cls(path)
        if not isinstance(doc, dict):
            return cls(path)

        def number(key: str) -> float:
            v = doc.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0.0

        folds = doc.get("folds")
        return cls(
            path,
            number("spent_s"),
            {str(k): v for k, v in folds.items() if isinstance(v, dict)} if isinstance(folds, dict) else {},
            number("inference_s"),
        )

    def save(self) -> None:
        doc = {"spent_s": self.spent_s, "inference_s": self.inference_s, "folds": self.folds}
        write_text_atomic(self.path, json.dumps(doc, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ the run


def run_cross_validation(cfg: DictConfig, train: Callable[[DictConfig], dict]) -> dict:
    """Train one model per fold, predict every case out of fold, choose the clean-up, score, and write the
    final predictor (see the module docstring).

    Args:
        cfg: the composed config (``cross_validation: true``).
        train: trains one fold's config and returns its results (:func:`brats_lightning.training.train.train`,
            passed in: it calls this module).

    Returns:
        The run's figures (``cv/...``, ``test/...`` with held-out cases, times), as in ``metrics.json``.
    """
    from hydra.utils import instantiate

    from brats_lightning.config import check_budget, register_resolvers

    register_resolvers()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = CVOptions.from_config(cfg.get("cv"))
    timed = cfg.get("budget_minutes") is not None
    budget_s = reserve_s = 0.0
    if timed:
        budget, reserve = check_budget(cfg.get("budget_minutes"), cfg.get("reserve_minutes", 0))
        budget_s, reserve_s = 60.0 * budget, 60.0 * reserve
    t_all = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()  # (not counted in the budget: once per data set, cached after)
    dm.setup("fit")
    assert dm.splits is not None
    folds: list[list[str]] = [list(f) for f in dm.splits["folds"]]
    groups = dict(dm.splits.get("groups") or dm.case_groups([c for f in folds for c in f]))
    cases = {c.case_id: c for c in [*dm.train_cases, *dm.val_cases]}
    state = _State.load(out)
    start = time.monotonic() - state.spent_s
    rank0 = _rank() == 0
    # the raw weights get a pass of their own
    averaged = opts.raw_weights and bool((cfg.get("callbacks") or {}).get("ema"))
    rate = state.inference_s
    # measured before the first fold, so that every fold gets the same share of the budget, the first one included
    if timed and not rate and rank0 and not opts.fold_minutes:
        rate = inference_seconds(cfg, dm.describe(), cases[folds[0][0]], opts, averaged, out / ".calibration")
        state.inference_s = rate
        state.save()
        log.info("Out-of-fold inference: %.1f s per case (measured)", rate)
    rate = rate or DEFAULT_INFERENCE_S * (1 + len(opts.tta_flips) + int(averaged))
    log.info(
        "Cross-validation over %d cases in %d folds (%s)%s",
        len(cases),
        len(folds),
        ", ".join(f"{g}: {sum(1 for c in cases if groups.get(c) == g)}" for g in sorted(set(groups.values()))),
        f", {budget_s / 60:.1f} minutes" if timed else "",
    )
    for k, fold in enumerate(folds):
        fold_dir = out / f"fold_{k}"
        record = state.folds.get(str(k), {})
        if record.get("done") and all((out / "oof" / f"{c}.npz").is_file() for c in fold):
            log.info("Fold %d: done in an earlier run (kept)", k)
            continue
        train_s = 60.0 * float(opts.fold_minutes) if opts.fold_minutes else None
        if timed and train_s is None:
            left = budget_s - (time.monotonic() - start) - reserve_s
            train_s = record.get("train_s") or fold_seconds(left, len(folds) - k, rate * len(fold))
            record["train_s"] = train_s
            state.folds[str(k)] = record
            state.save()
        last = fold_dir / "checkpoints" / "last.ckpt"
        fold_cfg = _fold_config(cfg, k, fold_dir, train_s, last if last.is_file() else None)
        log.info(
            "Fold %d of %d: %d training, %d out-of-fold cases%s",
            k,
            len(folds),
            len(cases) - len(fold),
            len(fold),
            f", {train_s / 60:.1f} training minutes" if train_s else "",
        )
        results = train(fold_cfg)
        t0 = time.monotonic()
        if rank0:
            predict_out_of_fold(last, [cases[c] for c in fold], opts, out / "oof", fold_cfg, k)
        rate = (time.monotonic() - t0) / max(1, len(fold))
        record.update(
            done=True, steps=results.get("train/steps"), fit_s=results.get("time/fit_s"), infer_s_per_case=rate
        )
        state.folds[str(k)] = record
        state.spent_s = time.monotonic() - start
        state.save()
    if not rank0:
        return {}
    figures = aggregate(out, dm, folds, groups, cases, opts, cfg)
    for key, rec in state.folds.items():
        figures[f"cv/fold{key}/steps"] = float(rec.get("steps") or 0)
    if dm.test_cases:
        figures |= held_out_test(out, dm, cfg)
    state.spent_s = time.monotonic() - start
    state.save()
    figures["time/budget_s"] = budget_s
    figures["time/cv_s"] = state.spent_s
    figures["time/total_s"] = time.perf_counter() - t_all
    write_text_atomic(out / "metrics.json", json.dumps(figures, indent=2, sort_keys=True) + "\n")
    from brats_lightning.callbacks.wandb_run import log_cross_validation

    # with logger=wandb: the figures as the summary of one W&B run for the whole cross-validation, in the folds' group
    log_cross_validation(cfg, figures)
    return figures


def _fold_config(cfg: DictConfig, fold: int, fold_dir: Path, train_s: float | None, resume: Path | None) -> DictConfig:
    """The config of one fold's training: its fold, folder, time and no test (the folds are scored here)."""
    fold_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    assert isinstance(fold_cfg, DictConfig)
    with open_dict(fold_cfg):
        fold_cfg.cross_validation = False
        fold_cfg.data.fold = fold
        fold_cfg.paths.output_dir = str(fold_dir)
        fold_cfg.test = False
        fold_cfg.ckpt_path = str(resume) if resume is not None else None
        if train_s is not None:
            fold_cfg.trainer.max_time = {"seconds": float(train_s)}
    return fold_cfg


class _OutOfFold(pl.LightningModule):
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
        from brats_lightning.inference.flips import FLIPS
        from brats_lightning.inference.uncertainty import agreement, normalised_entropy

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
    from hydra.utils import instantiate

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
    from brats_lightning.errors import CheckpointError
    from brats_lightning.files import read_checkpoint
    from brats_lightning.load.checkpoint import load_module

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
    from brats_lightning.data.datasets import VolumeDataset, first_item

    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(opts.missing_modalities) - set(data_config.get("modalities") or [])
    if unknown:
        raise ConfigError(f"cv.missing_modalities: {sorted(unknown)} are not among data.modalities")
    context = int(data_config.get("context_slices", 0))
    loader = DataLoader(VolumeDataset(cases, context), batch_size=1, collate_fn=first_item)
    trainer = _inference_trainer(cfg, progress=True)
    predictor = _OutOfFold(model, raw, opts, out_dir, fold, case_channels(data_config))
    trainer.predict(predictor, loader, return_predictions=False)


# ------------------------------------------------------------------------------------------ scoring


def _load_case(oof: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A case's out-of-fold classes and its label, ``(X, Y, Z)`` in the brain's box (the cache's crop)."""
    with np.load(oof) as z:
        classes = z["classes"]
    label = np.load(folder / "label.npy", mmap_mode="r")
    return np.ascontiguousarray(classes.transpose(1, 2, 0)), np.ascontiguousarray(label.transpose(1, 2, 0))


def _score(pred: np.ndarray, gt: np.ndarray, convention: LabelConvention, spacing, regions: Sequence[str]) -> float:
    """Mean over ``regions`` of (Dice + lesion-wise Dice) / 2: the clean-up's objective."""
    from brats_lightning.evaluation.lesions import brats2023_lesion_metrics
    from brats_lightning.evaluation.metrics import dice

    pm, gm = convention.region_masks(pred), convention.region_masks(gt)
    values = [
        (dice(pm[r], gm[r]) + brats2023_lesion_metrics(pm[r], gm[r], spacing)["lesion_dice"]) / 2 for r in regions
    ]
    return float(np.mean(values))


def _candidate_scores(job: tuple) -> list[float]:
    """Scores of the candidates of one case (a worker's job)."""
    from brats_lightning.inference.cleanup import apply_cleanup

    oof, folder, spacing, convention, candidates, regions = job
    pred, gt = _load_case(oof, folder)
    return [_score(apply_cleanup(pred, spacing, convention, c), gt, convention, spacing, regions) for c in candidates]


def _case_metrics(job: tuple) -> list[dict]:
    """Every metric of every region of one case on its full grid, after its clean-up (a worker's job)."""
    from brats_lightning.evaluation.metrics import region_metrics
    from brats_lightning.inference.cleanup import apply_cleanup

    case_id, oof, folder, spacing, box, ras_shape, convention, options = job
    pred, gt = _load_case(oof, folder)
    pred = apply_cleanup(pred, spacing, convention, options)
    p, g = uncrop(pred, box, ras_shape), uncrop(gt, box, ras_shape)
    pm, gm = convention.region_masks(p), convention.region_masks(g)
    return [
        {"case": case_id, "region": r, **region_metrics(pm[r], gm[r], spacing, True, lesion_wise=True)} for r in REGIONS
    ]


#: the out-of-fold predictions scored without clean-up (Dice only): name in metrics.json -> array in the npz
VARIANTS = {"cv_flips": "classes", "cv_single": "classes_single", "cv_raw": "classes_raw"}


def _variant_dice(job: tuple) -> dict[str, list[float]]:
    """Region Dice of every saved prediction of one case, without clean-up (a worker's job)."""
    from brats_lightning.evaluation.metrics import dice

    oof, folder, convention = job
    label = np.load(folder / "label.npy", mmap_mode="r")
    gm = convention.region_masks(np.asarray(label))
    out = {}
    with np.load(oof) as z:
        keys = {**VARIANTS, **{f"cv_missing_{k.removeprefix('classes_missing_')}": k for k in z.files
                               if k.startswith("classes_missing_")}}  # fmt: skip
        for name, key in keys.items():
            if key in z.files:
                pm = convention.region_masks(z[key])
                out[name] = [dice(pm[r], gm[r]) for r in REGIONS]
    return out


def _fold_means(values: dict[str, list[float]], fold_of: dict[str, int], prefix: str) -> dict[str, float]:
    """``<prefix>/dice_<region>``, ``<prefix>/dice_mean`` and ``<prefix>/fold<k>/dice_mean`` of per-case region Dice."""
    arr = np.array([values[c] for c in sorted(values)])
    out = {f"{prefix}/dice_{r}": float(arr[:, i].mean()) for i, r in enumerate(REGIONS)}
    out[f"{prefix}/dice_mean"] = float(arr.mean())
    for k in sorted(set(fold_of.values())):
        sel = [values[c] for c in sorted(values) if fold_of[c] == k]
        out[f"{prefix}/fold{k}/dice_mean"] = float(np.mean(sel))
    return out


def _pool_map(fn: Callable[[tuple], Any], jobs: list[tuple], workers: int) -> list[Any]:
    from brats_lightning.data.cache import available_cores

    workers = min(len(jobs), workers or available_cores())
    if workers <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(fn, jobs))


def _tuning_subset(ids: list[str], fold_of: dict[str, int], n: int) -> list[str]:
    """At most ``n`` cases, spread evenly over the folds (deterministic)."""
    if len(ids) <= n:
        return ids
    by_fold: dict[int, list[str]] = {}
    for c in ids:
        by_fold.setdefault(fold_of[c], []).append(c)
    per = max(1, n // len(by_fold))
    return sorted(c for members in by_fold.values() for c in members[:: max(1, len(members) // per)][:per])


def aggregate(
    out: Path,
    dm: Any,
    folds: list[list[str]],
    groups: dict[str, str],
    cases: dict[str, PreparedCase],
    opts: CVOptions,
    cfg: DictConfig,
) -> dict[str, float]:
    """Choose the clean-up on the out-of-fold segmentations, score every case with the choice made
    without it, write ``cv/`` and the final predictor. Returns the ``cv/...`` figures."""
    from brats_lightning.evaluation.results import print_table, run_metrics, summarise, write_results

    conv: LabelConvention = dm.convention
    fold_of = {c: k for k, f in enumerate(folds) for c in f}
    ids = sorted(fold_of)
    oof = {c: out / "oof" / f"{c}.npz" for c in ids}
    missing = [c for c in ids if not oof[c].is_file()]
    if missing:
        raise FileNotFoundError(f"out-of-fold predictions missing for {missing[:5]} in {out / 'oof'}")
    tune = _tuning_subset(ids, fold_of, opts.tune_max_cases)
    fold_arr = np.array([fold_of[c] for c in tune])
    t0 = time.perf_counter()
    comps = cleanup_candidates(opts.min_volumes_mm3, opts.largest_only)
    jobs = [(oof[c], cases[c].folder, cases[c].spacing, conv, comps, REGIONS) for c in tune]
    score_a = np.array(_pool_map(_candidate_scores, jobs, opts.workers))
    n_folds = len(folds)
    pick_a = {k: choose_cleanup(score_a, fold_arr, fold_arr != k)[0] for k in range(n_folds)}
    final_a, figures_a = choose_cleanup(score_a, fold_arr, np.ones(len(tune), bool))
    et_scores: dict[int, np.ndarray] = {}
    for a in sorted({final_a, *pick_a.values()}):
        rules = et_rule_candidates(comps[a], opts.et_volumes_mm3)
        jobs = [(oof[c], cases[c].folder, cases[c].spacing, conv, rules, ("et",)) for c in tune]
        et_scores[a] = np.array(_pool_map(_candidate_scores, jobs, opts.workers))
    final_b, figures_b = choose_cleanup(et_scores[final_a], fold_arr, np.ones(len(tune), bool))
    final = et_rule_candidates(comps[final_a], opts.et_volumes_mm3)[final_b]
    nested = {}
    for k in range(n_folds):
        b = choose_cleanup(et_scores[pick_a[k]], fold_arr, fold_arr != k)[0]
        nested[k] = et_rule_candidates(comps[pick_a[k]], opts.et_volumes_mm3)[b]
    tuning = {
        "cases": len(tune),
        "components": [{"option": c, "gain": g, "se": e} for c, g, e in zip(comps, figures_a["gain"], figures_a["se"])],
        "et_rule": [
            {"option": c, "gain": g, "se": e}
            for c, g, e in zip(
                et_rule_candidates(comps[final_a], opts.et_volumes_mm3), figures_b["gain"], figures_b["se"]
            )
        ],
        "final": final,
        "nested": {str(k): v for k, v in nested.items()},
        "seconds": time.perf_counter() - t0,
    }
    log.info("Clean-up chosen on %d out-of-fold cases: %s (nested per fold: %s)", len(tune), final, nested)
    metric_jobs = [
        (c, oof[c], cases[c].folder, cases[c].spacing, cases[c].box, cases[c].ras_shape, conv, nested[fold_of[c]])
        for c in ids
    ]
    rows = [row for case_rows in _pool_map(_case_metrics, metric_jobs, opts.workers) for row in case_rows]
    name = str(cfg.model.get("name") or "model")
    summary = summarise(
        rows,
        method=name,
        evaluation="cross-validation: every case segmented by the fold model that never trained on it, "
        "cleaned up as chosen on the other folds",
        run=str(out),
        folds=n_folds,
        cleanup=final,
        tta_flips=list(opts.tta_flips),
    )
    cv_dir = out / "cv"
    write_results(cv_dir, rows, summary, f"{name} (cross-validation)")
    write_csv_atomic(
        cv_dir / "folds.csv",
        [
            {"case": c, "fold": fold_of[c], "site": groups.get(c, "all"), "cleanup": json.dumps(nested[fold_of[c]])}
            for c in ids
        ],
        ["case", "fold", "site", "cleanup"],
    )
    write_text_atomic(cv_dir / "cleanup.json", json.dumps(tuning, indent=1) + "\n")
    write_text_atomic(cv_dir / "sites.md", site_table(rows, groups))
    print_table(summary, f"Cross-validation, out of fold ({summary['n_cases']} cases, {n_folds} folds) - {out}")
    print(site_table(rows, groups))
    _write_predictor(out, len(folds), final, list(opts.tta_flips))
    figures = run_metrics(summary, prefix="cv/")
    per_case = {c: [next(r["dice"] for r in rows if r["case"] == c and r["region"] == g) for g in REGIONS] for c in ids}
    figures |= {k: v for k, v in _fold_means(per_case, fold_of, "cv").items() if "/fold" in k}
    variants: dict[str, dict[str, list[float]]] = {}
    for c, scores in zip(ids, _pool_map(_variant_dice, [(oof[c], cases[c].folder, conv) for c in ids], opts.workers)):
        for name, values in scores.items():
            variants.setdefault(name, {})[c] = values
    for name, values in variants.items():
        if len(values) == len(ids):
            figures |= _fold_means(values, fold_of, name)
    if opts.uncertainty:
        figures |= uncertainty_figures(out, ids, cases, per_case)
    figures["cv/cleanup_s"] = time.perf_counter() - t0
    return figures


def _case_uncertainty(job: tuple) -> tuple[float, float, np.ndarray, np.ndarray]:
    """One case: the AUROC of its voxel uncertainty for its wrong voxels, its agreement, and a voxel sample."""
    from brats_lightning.inference.uncertainty import auroc

    oof, folder, sample = job
    with np.load(oof) as z:
        classes, unc, score = z["classes"], z["uncertainty"].astype(np.float32), float(z["agreement"])
    label, brain = np.load(folder / "label.npy"), np.load(folder / "mask.npy")
    wrong, u = (classes != label)[brain], unc[brain]
    pick = np.random.default_rng(0).choice(u.size, size=min(sample, u.size), replace=False)
    return auroc(u, wrong), score, u[pick], wrong[pick]


def uncertainty_figures(
    out: Path, ids: list[str], cases: dict[str, PreparedCase], dice: dict[str, list[float]], sample: int = 200_000
) -> dict[str, float]:
    """How well the out-of-fold uncertainty does its job (``cv.uncertainty``): the AUROC of the voxel map for
    the wrong voxels (pooled over the cases' brains, and per case), and Spearman's correlation between the
    members' agreement and the case's real mean Dice; per case in ``cv/uncertainty.csv``."""
    from brats_lightning.inference.uncertainty import auroc, spearman

    results = _pool_map(_case_uncertainty, [(out / "oof" / f"{c}.npz", cases[c].folder, sample) for c in ids], 0)
    real = [float(np.mean(dice[c])) for c in ids]
    rows = [
        {"case": c, "voxel_auroc": a, "agreement": s, "mean_dice": d} for c, (a, s, _, _), d in zip(ids, results, real)
    ]
    write_csv_atomic(out / "cv" / "uncertainty.csv", rows, ["case", "voxel_auroc", "agreement", "mean_dice"])
    voxel = auroc(np.concatenate([r[2] for r in results]), np.concatenate([r[3] for r in results]))
    rho = spearman([r[1] for r in results], real)
    log.info("Uncertainty, out of fold: voxel AUROC %.3f (pooled), Spearman(agreement, Dice) %+.3f", voxel, rho)
    return {
        "cv/uncertainty_voxel_auroc": voxel,
        "cv/uncertainty_voxel_auroc_per_case": float(np.nanmean([r[0] for r in results])),
        "cv/uncertainty_case_spearman": rho,
    }


def site_table(rows: list[dict], groups: dict[str, str]) -> str:
    """Markdown: per site (and all), the number of cases and the mean Dice, HD95 and lesion-wise Dice per region."""
    sites = sorted({groups.get(r["case"], "all") for r in rows})
    head = ["site", "cases"] + [f"{m} {r.upper()}" for m in ("Dice", "HD95", "lesion Dice") for r in REGIONS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for site in [*sites, None] if len(sites) > 1 else sites:
        sel = [r for r in rows if site is None or groups.get(r["case"], "all") == site]
        n = len({r["case"] for r in sel})
        cells = []
        for metric, fmt in (("dice", "{:.3f}"), ("hd95", "{:.1f}"), ("lesion_dice", "{:.3f}")):
            for region in REGIONS:
                vals = [r[metric] for r in sel if r["region"] == region and metric in r]
                cells.append(fmt.format(float(np.mean(vals))) if vals else "–")
        lines.append(f"| {site if site is not None else '**all**'} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_predictor(out: Path, n_folds: int, cleanup: dict, flips: list[str]) -> None:
    """Store the final clean-up and flips in every fold's checkpoint, and list them in ``predictor.json``."""
    from brats_lightning.files import read_checkpoint

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
    from brats_lightning.evaluation.results import print_table, run_metrics, summarise, write_results
    from brats_lightning.inference.flips import tta_flips
    from brats_lightning.load.checkpoint import load_module
    from brats_lightning.modules.ensemble import EnsembleModule

    members = [load_module(p)[0] for p in predictor_checkpoints(out)]
    ensemble = EnsembleModule(members, tta_flips(members[0].tta_flips))
    trainer = _inference_trainer(cfg, progress=False)
    trainer.test(ensemble, datamodule=dm, verbose=False)
    name = f"{cfg.model.get('name') or 'model'} (ensemble of {len(members)} folds)"
    summary = summarise(
        ensemble.test_results, method=name, evaluation="held-out test: cases that chose nothing", run=str(out)
    )
    write_results(out / "test", ensemble.test_results, summary, name)
    print_table(summary, f"Held-out test ({summary['n_cases']} cases) - {out}")
    return run_metrics(summary, prefix="test/")
