"""Checkpoint callbacks.

A run keeps two kinds of checkpoint (see ``conf/callbacks/default.yaml``):

* ``best.ckpt``: the best epoch on ``val/dice_mean`` (Lightning's ``ModelCheckpoint`` with a monitor);
* ``last.ckpt``: the latest *completed* epoch, rewritten at the end of every training epoch, after
  validation and after the other callbacks have updated their state, so that a run killed at any
  point resumes with ``ckpt_path=<run>/checkpoints/last.ckpt`` from its last completed epoch with
  every callback's state (best score so far, training phase) intact. It is a separate, unmonitored
  ``ModelCheckpoint``: Lightning's ``save_last`` on a monitored one rewrites ``last.ckpt`` only when a
  new best is saved, so a resume from it could silently go back epochs.

A resume usually writes into a new run folder. Lightning's ``ModelCheckpoint`` then forgets the best
score so far (it only keeps it when the folder is the same), so the first resumed epoch would be
saved as "best" whatever its score: :class:`BestCheckpoint` keeps the score and copies the best
checkpoint into the new folder, so the resumed run's ``best.ckpt`` is the best of the whole run.

Havaei et al.'s two-phase training reports the best epoch of phase 2 (the starred models):
:class:`PhaseCheckpoint` is a :class:`BestCheckpoint` that only considers the epochs of one phase, so
``callbacks=two_phase`` keeps ``phase1_best.ckpt`` and ``best.ckpt`` (phase 2) side by side.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["BestCheckpoint", "PhaseCheckpoint", "current_phase", "final_best_checkpoint"]


def current_phase(trainer: pl.Trainer) -> int | None:
    """The phase in which the current epoch trained, from the run's two-phase callback (``None`` without one).

    Checkpoint callbacks may save after the switch at the end of phase 1's last epoch; that epoch
    still belongs to phase 1.
    """
    from brats_lightning.callbacks.two_phase import TwoPhaseTraining

    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, TwoPhaseTraining):
            return cb.phase_of(trainer.current_epoch)
    return None


class BestCheckpoint(ModelCheckpoint):
    """A monitored ``ModelCheckpoint`` whose best-so-far survives a resume into another run folder.

    When the restored state comes from another folder, the paths in it are moved to this one and the
    best checkpoint file is copied over (when fitting starts, by rank 0; also when no epoch is left to
    train), so that the score to beat and ``best.ckpt`` stay those of the whole run.
    """

    _carry: tuple[Path, Path] | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath")
        if self.dirpath is None or old_dir in (None, self.dirpath):
            super().load_state_dict(state_dict)
            return
        new_dir = Path(self.dirpath)
        old_best = state_dict.get("best_model_path") or ""
        new_best = str(new_dir / Path(old_best).name) if old_best else ""

        def moved(path: str) -> str:
            return str(new_dir / Path(path).name) if path else path

        state = {
            **state_dict,
            "dirpath": self.dirpath,
            "best_model_path": new_best,
            "kth_best_model_path": moved(state_dict.get("kth_best_model_path", "")),
            "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            "last_model_path": "",
        }
        super().load_state_dict(state)
        self._carry = (Path(old_best), Path(new_best)) if old_best else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_start, not on_train_start: Lightning skips the whole training loop (and its hooks) when a
        # run resumes from the checkpoint of its last epoch, and the test still needs this run's best.ckpt
        if self._carry is not None and trainer.is_global_zero:
            src, dst = self._carry
            if src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        self._carry = None
        trainer.strategy.barrier("best checkpoint carried over")
        super().on_fit_start(trainer, pl_module)


class PhaseCheckpoint(BestCheckpoint):
    """A :class:`BestCheckpoint` that only considers the epochs of one training phase.

    Args:
        phase: the phase (1 or 2) whose epochs it monitors; without a two-phase callback it
            behaves as a plain ``ModelCheckpoint``.
        **kwargs: ``ModelCheckpoint`` arguments.
    """

    def __init__(self, phase: int, **kwargs: Any) -> None:
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {phase}")
        super().__init__(**kwargs)
        self.phase = phase

    @property
    def state_key(self) -> str:
        return f"{super().state_key}[phase={self.phase}]"

    def _active(self, trainer: pl.Trainer) -> bool:
        phase = current_phase(trainer)
        return phase is None or phase == self.phase

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer):
            super().on_train_epoch_end(trainer, pl_module)


def final_best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The checkpoint a run reports: the best monitored one (of the last phase), else the last one."""
    best = [
        cb
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and getattr(cb, "phase", 2) == 2
    ]
    for cb in best:
        if cb.best_model_path:
            return cb.best_model_path
    for other in trainer.checkpoint_callbacks:
        if isinstance(other, ModelCheckpoint) and other.monitor is None:
            if other.best_model_path or other.last_model_path:
                return other.best_model_path or other.last_model_path
    return None
