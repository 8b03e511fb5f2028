"""Training entry point: ``python -m brats_lightning [overrides]``.

``train(cfg)`` is a plain function (tests call it with a composed config); :func:`main` is the thin
Hydra wrapper around it.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from brats_lightning.callbacks.checkpoint import AtomicCheckpointIO, final_best_checkpoint
from brats_lightning.callbacks.two_phase import TwoPhaseTraining
from brats_lightning.callbacks.wandb_run import WandbRunId, fold_runs, is_wandb_logger, plain_config, wandb_init_args
from brats_lightning.config import apply_extras, check_budget, register_resolvers
from brats_lightning.crossval import run_cross_validation
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.evaluation.results import print_table, run_metrics, summarise, write_results
from brats_lightning.files import atomic_path, write_csv_atomic, write_text_atomic
from brats_lightning.load.checkpoint import check_fits
from brats_lightning.options import check_config, command
from brats_lightning.training.pipeline import run_pipeline

__all__ = ["check_run_options", "main", "optimized_value", "run", "train"]

log = logging.getLogger("brats_lightning")

# Lightning 2.6 with torch >= 2.10 warns on every fit about its own use of a deprecated torch API.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _instantiate_dict(node: DictConfig | None) -> list:
    """Instantiate every entry of a config dict that has a ``_target_`` (the callbacks)."""
    if not node:
        return []
    return [instantiate(v, _convert_="all") for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def _loggers(cfg: DictConfig) -> list:
    """The configured loggers; a W&B logger gets its automatic group and, when training resumes from a
    checkpoint of a W&B run, continues that run (:mod:`brats_lightning.callbacks.wandb_run`)."""
    node = cfg.get("logger")
    if not node:
        return []
    return [
        instantiate(v, _convert_="all", **(wandb_init_args(cfg, v) if is_wandb_logger(v) else {}))
        for v in node.values()
        if isinstance(v, DictConfig) and "_target_" in v
    ]


def write_curve(path: Path, history: list[dict]) -> None:
    """Validation Dice per epoch as CSV (written whatever the logger)."""
    if not history:
        return
    write_csv_atomic(path, sorted(history, key=lambda h: h["epoch"]), list(history[0]))


def write_slices(path: Path, slices: list[dict]) -> None:
    """Save the test cases' display slices (image, truth, prediction) for reports (atomic)."""
    if not slices:
        return
    arrays = {}
    for s in slices:
        for k in ("image", "label", "pred"):
            arrays[f"{s['case']}/{k}"] = s[k]
    arrays["channels"] = np.array(slices[0]["channels"])
    arrays["convention"] = np.array(slices[0]["convention"])
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def training_figures(history: list[dict], steps: int, seconds: float) -> dict[str, float]:
    """What a training run achieved: validation Dice of its best epoch (on ``val/dice_mean``, as ``best.ckpt``),
    its steps and its minutes (``val/best_dice_wt`` ..., ``val/best_epoch``, ``train/steps``, ``time/fit_s``)."""
    out: dict[str, float] = {"train/steps": float(steps), "time/fit_s": float(seconds)}
    if history:
        best = max(history, key=lambda h: h["val/dice_mean"])
        out.update({k.replace("val/", "val/best_"): float(v) for k, v in best.items() if k.startswith("val/")})
        out["val/best_epoch"] = float(best["epoch"])
    return out


def method_name(model: pl.LightningModule, callbacks: list) -> str:
    """The method's name in tables and reports: the model's (``model.name``), with Havaei et al.'s ``*``
    when it trains in two phases (their Tables 1-2: "TwoPathCNN*")."""
    name = str(getattr(model, "display_name", type(model).__name__))
    if any(isinstance(c, TwoPhaseTraining) for c in callbacks) and not name.endswith("*"):
        name += "*"
    return name


def _strategy(cfg: DictConfig, callbacks: list) -> dict:
    """DDP must know when parameters stop receiving gradients during training (two-phase training's
    phase 2 freezes all but the output layer after DDP has wrapped the model)."""
    freezes = any(getattr(c, "freezes_parameters", False) for c in callbacks)
    if str(cfg.trainer.get("strategy", "")) == "ddp" and freezes:
        log.info("DDP with parameters frozen during training: strategy=ddp_find_unused_parameters_true")
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}


def check_run_options(cfg: DictConfig) -> None:
    """Reject run options that cannot work, before anything is built or any data prepared.

    Raises:
        ConfigError: the message names the option and what would work.
        CheckpointError: ``ckpt_path`` is not a readable file.
    """
    check_config(cfg, "train")  # every option's type and range (brats_lightning.options)
    if "budget_minutes" in cfg:  # experiment=real_fast: checked before trainer.max_time is computed from it
        check_budget(cfg.get("budget_minutes"), cfg.get("reserve_minutes", 0))
    t = cfg.trainer
    max_epochs = t.get("max_epochs")
    if max_epochs is None or max_epochs == -1:
        has_stop = t.get("max_time") not in (None, "") or (t.get("max_steps") or -1) > 0
        callbacks = (cfg.get("callbacks") or {}).values()
        has_stop = has_stop or any("EarlyStopping" in str(v.get("_target_", "")) for v in callbacks)
        if not has_stop:
            raise ConfigError(
                f"trainer.max_epochs={max_epochs} trains without end: give a positive trainer.max_epochs, or ask for "
                "an open-ended run explicitly with a stop: trainer.max_time=DD:HH:MM:SS, trainer.max_steps=N or "
                "callbacks=early_stopping"
            )
    elif not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be a positive integer (or -1 with a stop), got {max_epochs!r}")
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        path = Path(str(ckpt))
        if not path.is_file():
            raise CheckpointError(f"ckpt_path={ckpt}: {'is a directory' if path.is_dir() else 'no such file'}")
    elif not cfg.get("train", True) and cfg.get("test", True):
        raise ConfigError("train=false tests a trained model: give its checkpoint with ckpt_path=...")


def train(cfg: DictConfig) -> dict:
    """Train (and test) the configured model on the configured data.

    Writes checkpoints, ``val_curve.csv``, ``metrics.json`` (the flat test figures and
    :func:`training_figures`), the test set's ``per_case.csv``, ``summary.json`` and ``summary.md``
    (as ``evaluate``'s: :mod:`brats_lightning.evaluation.results`) and ``test_slices.npz`` (a display slice per
    test case, for reports) into ``cfg.paths.output_dir``.
    With ``train=false`` and ``ckpt_path=...`` it tests that checkpoint.

    Returns:
        The test metrics (``test/dice_wt`` ...; none when ``cfg.test`` is false), the training's
        (:func:`training_figures`), ``time/total_s`` and ``best_ckpt``, the checkpoint tested (best on
        ``val/dice_mean``, else the last one). ``metrics.json`` holds them all but ``best_ckpt``.
    """
    register_resolvers()
    check_run_options(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    t0 = time.perf_counter()
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    # everything that can be checked before the data are prepared: stage checkpoints, crop sizes,
    # and that the checkpoint to resume from (or to test) holds weights for this model
    model.preflight(datamodule)
    if cfg.get("ckpt_path"):
        check_fits(cfg.ckpt_path, model, "resume from" if cfg.get("train", True) else "test")
    # WandbRunId: the W&B run's id in every checkpoint, so that a resume continues the run
    callbacks = [*_instantiate_dict(cfg.get("callbacks")), WandbRunId()]
    loggers = _loggers(cfg)
    run_config = plain_config(cfg)
    for lg in loggers:
        lg.log_hyperparams(run_config)
    # checkpoints written atomically beside their final name (a full disk never leaves a half-written last.ckpt)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
        **_strategy(cfg, callbacks),
    )
    results: dict = {}
    ckpt = None
    try:
        if cfg.get("train", True):
            # weights_only=True explicitly: a resumed checkpoint cannot run code, whatever the environment says
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            if trainer.is_global_zero:
                write_curve(out_dir / "val_curve.csv", model.val_history)
            # a resume with no epoch left to train and no best checkpoint beside it tests the checkpoint resumed from
            ckpt = final_best_checkpoint(trainer) or (str(cfg.ckpt_path) if cfg.get("ckpt_path") else None)
            results["best_ckpt"] = ckpt
            results.update(training_figures(model.val_history, trainer.global_step, time.perf_counter() - t0))
        elif cfg.get("ckpt_path"):
            ckpt = str(cfg.ckpt_path)  # test a trained checkpoint: train=false ckpt_path=...
        if cfg.get("test", True):
            log.info("Testing %s", ckpt or "the model's current weights")
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
            rows = model.test_results
            summary = summarise(rows, method=method_name(model, callbacks), run=str(out_dir), checkpoint=ckpt)
            results.update(run_metrics(summary))
            if trainer.is_global_zero:
                write_results(out_dir, rows, summary, summary["method"])
                write_slices(out_dir / "test_slices.npz", model.test_slices)
                print_table(summary, f"Test set ({summary['n_cases']} cases) - {out_dir}")
        results["time/total_s"] = time.perf_counter() - t0
        metrics = {k: v for k, v in results.items() if k != "best_ckpt"}
        if trainer.is_global_zero and metrics.keys() - {"time/total_s"}:
            write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    finally:
        _finish_wandb(loggers)
    return results


def _finish_wandb(loggers: list) -> None:
    """Close W&B runs at the end of each job (one run per job of a multirun, per fold of a cross-validation)."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


register_resolvers()


@command("train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` (for sweepers: a validation or out-of-fold figure)."""
    apply_extras(cfg)
    return optimized_value(cfg, run(cfg))


def run(cfg: DictConfig) -> dict:
    """What ``python -m brats_lightning`` runs for a composed config: a multi-stage pipeline, a cross-validation
    (``experiment=real_fast``) or one training run; returns its figures."""
    if cfg.get("pipeline"):
        check_config(cfg, "train")  # before the first stage (each stage's own config is checked as it starts)
        return run_pipeline(cfg, train)
    if cfg.get("cross_validation"):
        check_run_options(cfg)
        return run_cross_validation(cfg, fold_runs(cfg, train))
    return train(cfg)


def optimized_value(cfg: DictConfig, results: dict) -> float | None:
    """The figure ``cfg.optimized_metric`` names among a run's results (``None`` when the run has none of it).

    Raises:
        ConfigError: ``optimized_metric`` names a test figure in a sweep (the test cases would choose).
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if str(name).startswith("test/") and _in_sweep():
        raise ConfigError(
            f"optimized_metric={name}: a hyper-parameter search may not maximise a test figure (its cases would "
            "choose, and their figures would no longer be a test); maximise a validation or out-of-fold figure, "
            "e.g. optimized_metric=val/best_dice_mean"
        )
    value = results.get(str(name))
    return None if value is None else float(value)


def _in_sweep() -> bool:
    """Whether this job runs in a Hydra multirun (a sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ValueError, AttributeError):
        return False
