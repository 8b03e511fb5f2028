"""Cross-validation in one command, one budget, one folder: every case segmented by a model that never saw it.

``cross_validation: true`` (``experiment=real_fast``) turns a training run into a k-fold
cross-validation over all the cases (nnU-Net's practice, Isensee et al. 2021):

1. **Folds** come from the split file, stratified by site (:mod:`brats_lightning.data.groups`): every
   fold holds every site in proportion (``data.split=site``: one site per fold).
2. **One model per fold** is trained on the other folds, in ``<run>/fold_<k>/``, for its share of the
   wall-clock budget (``budget_minutes`` less ``reserve_minutes``, split evenly over the trainings left,
   less the time its out-of-fold inference is expected to take). Nothing is chosen on the fold's own
   cases: the fold's model is its final weights (with ``callbacks.ema``: their moving average), not a
   best epoch picked on them.
3. **Out-of-fold predictions**: each fold's model segments its fold's cases (with the test-time
   flips ``cv.tta_flips``), saved as ``<run>/oof/<case>.npz``.
4. **The clean-up** (connected components of the tumour, and the BraTS rule that turns a small
   enhancing volume into necrosis) is chosen on the out-of-fold segmentations by region Dice and
   lesion-wise Dice together (:func:`~brats_lightning.inference.cleanup.choose_cleanup`). For the
   cross-validation figures, fold ``k``'s cases get the choice made on the other folds only (nested), so
   no choice was made on a case it is scored on; the final choice uses every fold.
5. **Cross-validation figures**: Dice, HD95, sensitivity, specificity, PPV and the lesion-wise
   columns of every case and region on its full grid, as ``evaluate`` computes them, in
   ``<run>/cv/`` (``per_case.csv``, ``summary.json``, ``summary.md``, ``folds.csv``: each case's fold
   and site; ``sites.md``: per-site means) and ``metrics.json`` (``cv/dice_wt``, ``cv/hd95_et``, ...).
6. **The final predictor** (``cv.final``): ``all`` (the default), one more model of the same recipe trained on
   every case (``<run>/final/``, ``data.fold=-1``) for as long as a fold trained, within the same budget, so that
   ``predict`` runs one model; its estimate is the out-of-fold figures of the same recipe. ``ensemble``: the fold
   models averaged (nnU-Net's choice). ``<run>/predictor.json`` lists the checkpoints, each of which carries the
   final clean-up and flips, so ``predict ckpt_path=<run>`` uses it as it is.
   With ``data.test_fraction > 0`` it is also tested on the held-out cases, which chose nothing
   (``test/...`` in ``metrics.json``, ``<run>/test/``).
7. **A model card**, ``<run>/MODEL_CARD.md`` (:mod:`brats_lightning.crossval.card`): the cases and sites it learnt
   from, the figures with their intervals, the budget, the choices, the machine, intended use and known limits.

Running the same command again with ``hydra.run.dir=<run>`` resumes a killed run in place: finished
folds are kept, an interrupted fold resumes from its ``last.ckpt``, and the budget already spent
is counted (``cv_state.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from brats_lightning.callbacks.wandb_run import log_cross_validation
from brats_lightning.config import check_budget, register_resolvers
from brats_lightning.crossval.card import write_model_card
from brats_lightning.crossval.oof import inference_seconds, predict_out_of_fold
from brats_lightning.crossval.options import (
    DEFAULT_INFERENCE_S,
    CVOptions,
    CVState,
    fingerprint,
    fold_seconds,
    training_config,
)
from brats_lightning.crossval.predictor import FINAL_CHECKPOINT, held_out_test
from brats_lightning.crossval.scoring import aggregate
from brats_lightning.errors import ConfigError
from brats_lightning.files import write_text_atomic
from brats_lightning.load.runs import PREDICTOR_FILE
from brats_lightning.run_files import PredictorFile, read_run_file

__all__ = ["run_cross_validation"]

log = logging.getLogger("brats_lightning.crossval")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


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

    register_resolvers()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = CVOptions.from_config(cfg.get("cv"))
    check_fold_callbacks(cfg)
    timed = cfg.get("budget_minutes") is not None
    budget_s = reserve_s = 0.0
    if timed:
        budget, reserve = check_budget(cfg.get("budget_minutes"), cfg.get("reserve_minutes", 0))
        budget_s, reserve_s = 60.0 * budget, 60.0 * reserve
    state = CVState.load(out)  # a killed run's record, checked before any work
    if timed:
        state.check_budget(budget_s)
    t_all = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()  # (not counted in the budget: once per data set, cached after)
    dm.setup("fit")
    assert dm.splits is not None
    folds: list[list[str]] = [list(f) for f in dm.splits["folds"]]
    groups = dict(dm.splits.get("groups") or dm.case_groups([c for f in folds for c in f]))
    cases = {c.case_id: c for c in [*dm.train_cases, *dm.val_cases]}
    split = {"test": list(dm.splits["test"]), "folds": folds}
    config = training_config(cfg)
    state.check_resumable(fingerprint(split), fingerprint(config), config)
    state.split_hash, state.config_hash, state.config = fingerprint(split), fingerprint(config), config
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
    # the final model trained on every case (cv.final=all) takes a share of the budget like a fold
    extra = int(opts.final == "all")
    for k, fold in enumerate(folds):
        fold_dir = out / f"fold_{k}"
        record = state.folds.get(str(k), {})
        if record.get("done") and all((out / "oof" / f"{c}.npz").is_file() for c in fold):
            log.info("Fold %d: done in an earlier run (kept)", k)
            continue
        train_s = 60.0 * float(opts.fold_minutes) if opts.fold_minutes else None
        if timed and train_s is None:
            left = budget_s - (time.monotonic() - start) - reserve_s
            train_s = record.get("train_s") or fold_seconds(
                left, len(folds) - k + extra, rate * len(fold), 60.0 * opts.min_fold_minutes
            )
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
    if extra:
        _train_final(cfg, train, out, state, opts, budget_s - reserve_s - (time.monotonic() - start) if timed else None)
        state.spent_s = time.monotonic() - start
        state.save()
    if not rank0:
        return {}
    figures = aggregate(out, dm, folds, groups, cases, opts, cfg)
    for key, rec in state.folds.items():
        figures["final/steps" if key == "all" else f"cv/fold{key}/steps"] = float(rec.get("steps") or 0)
    if dm.test_cases:
        figures |= held_out_test(out, dm, cfg)
    state.spent_s = time.monotonic() - start
    state.save()
    figures["time/budget_s"] = budget_s
    figures["time/cv_s"] = state.spent_s
    figures["time/total_s"] = time.perf_counter() - t_all
    write_text_atomic(out / "metrics.json", json.dumps(figures, indent=2, sort_keys=True) + "\n")
    predictor = read_run_file(out / PREDICTOR_FILE, PredictorFile, "predictor description").model_dump()
    card = write_model_card(out, cfg, figures, groups, folds, state.folds, predictor)
    log.info("Model card: %s", card)

    # with logger=wandb: the figures as the summary of one W&B run for the whole cross-validation, in the folds' group
    log_cross_validation(cfg, figures)
    return figures


def _train_final(
    cfg: DictConfig,
    train: Callable[[DictConfig], dict],
    out: Path,
    state: CVState,
    opts: CVOptions,
    left_s: float | None,
) -> None:
    """``cv.final=all``: one more model of the same recipe, trained on every case of the folds in ``<run>/final/``
    for as long as a fold trained on average (less when less is left), with nothing validated."""
    record = state.folds.get("all", {})
    if record.get("done") and (out / FINAL_CHECKPOINT).is_file():
        log.info("The final model (all cases): done in an earlier run (kept)")
        return
    train_s = 60.0 * float(opts.fold_minutes) if opts.fold_minutes else None
    if left_s is not None and train_s is None:
        shares = [float(r["train_s"]) for key, r in state.folds.items() if key != "all" and r.get("train_s")]
        share = sum(shares) / len(shares) if shares else left_s
        train_s = record.get("train_s") or max(60.0 * opts.min_fold_minutes, min(share, left_s))
        record["train_s"] = train_s
        state.folds["all"] = record
        state.save()
    last = out / FINAL_CHECKPOINT
    final_cfg = _fold_config(cfg, -1, out / "final", train_s, last if last.is_file() else None)
    log.info(
        "The final model: the same recipe on all the cases%s (the shipped predictor)",
        f", {train_s / 60:.1f} training minutes" if train_s else "",
    )
    results = train(final_cfg)
    record.update(done=True, steps=results.get("train/steps"), fit_s=results.get("time/fit_s"))
    state.folds["all"] = record
    state.save()


#: callbacks that choose on validation cases, which in a cross-validation are the fold's out-of-fold cases
_CHOOSE_ON_VALIDATION = ("EarlyStopping", "TunePostprocess", "BestCheckpoint")


def check_fold_callbacks(cfg: DictConfig) -> None:
    """Refuse callbacks that would choose on a fold's validation cases (its out-of-fold test): an early stop, a
    tuning, a checkpoint kept for its validation score.

    Raises:
        ConfigError: naming the callback.
    """
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = str(node["_target_"]).rpartition(".")[2]
        monitors = target == "ModelCheckpoint" and node.get("monitor") is not None
        if target in _CHOOSE_ON_VALIDATION or monitors:
            raise ConfigError(
                f"callbacks.{name}: {target} chooses on validation cases, which in a cross-validation are the "
                f"fold's out-of-fold cases: remove it (callbacks.{name}=null); experiment=real_fast trains each "
                "fold for its share of the budget and keeps its final weights"
            )


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
        # the fold's own cases are its out-of-fold test: the fold validates on nothing, so nothing chooses on them
        fold_cfg.trainer.limit_val_batches = 0
        fold_cfg.trainer.num_sanity_val_steps = 0
        if train_s is not None:
            fold_cfg.trainer.max_time = {"seconds": float(train_s)}
    return fold_cfg


# ------------------------------------------------------------------------------------------ scoring
