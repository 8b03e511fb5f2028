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

import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from brats_lightning.errors import output_error
from brats_lightning.files import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "AtomicCheckpointIO",
    "BestCheckpoint",
    "PhaseCheckpoint",
    "RunCheckpoint",
    "current_phase",
    "final_best_checkpoint",
]


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


class RunCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose restored paths stay in this run's checkpoint folder.

    A checkpoint is data: the paths in its callback state (the best checkpoint, the top-k, which Lightning would
    delete when a newer one replaces them) are reduced to their file names inside :attr:`dirpath`, never followed
    where they point: a tampered ``last.ckpt`` naming ``/etc/passwd`` as its best copies and deletes nothing outside
    the run folder. (``last_checkpoint`` in ``conf/callbacks/default.yaml``.)
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.dirpath is None:
            super().load_state_dict(state_dict)
            return
        new_dir = Path(self.dirpath)

        def moved(path: Any) -> str:
            name = Path(str(path or "")).name
            return str(new_dir / name) if name.endswith(".ckpt") else ""

        state = {
            **state_dict,
            "dirpath": self.dirpath,
            "best_model_path": moved(state_dict.get("best_model_path")),
            "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
            "best_k_models": {p: v for k, v in (state_dict.get("best_k_models") or {}).items() if (p := moved(k))},
            "last_model_path": "",
        }
        super().load_state_dict(state)


class BestCheckpoint(RunCheckpoint):
    """A monitored :class:`RunCheckpoint` whose best-so-far survives a resume into another run folder.

    The best checkpoint is looked for beside the checkpoint resumed from (by its file name: the folder it came from)
    and copied into this run's folder when fitting starts (by rank 0; also when no epoch is left to train), so that
    the score to beat and ``best.ckpt`` stay those of the whole run. When it is not there (a ``last.ckpt`` copied
    without its folder), the resumed run keeps the best of its own epochs.
    """

    #: the best checkpoint's file name in the restored state, to be found beside the checkpoint resumed from
    _carry: str | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._carry = Path(self.best_model_path).name if self.best_model_path else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_start, not on_train_start: Lightning skips the whole training loop (and its hooks) when a
        # run resumes from the checkpoint of its last epoch, and the test still needs this run's best.ckpt
        if self._carry is not None:
            resumed = getattr(trainer, "ckpt_path", None)
            src = Path(str(resumed)).parent / self._carry if resumed else None
            dst = Path(str(self.dirpath)) / self._carry
            if src is not None and src.is_file():
                if trainer.is_global_zero and not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            elif not dst.is_file():
                # the best checkpoint is not beside the one resumed from (a last.ckpt copied without its folder):
                # the best of what this run trains is kept, not a score whose file is gone
                log.warning(
                    "%s is not beside %s: the resumed run keeps the best of its own epochs as %s",
                    self._carry,
                    resumed,
                    dst,
                )
                self.best_model_path, self.kth_best_model_path, self.best_k_models = "", "", {}
                self.best_model_score = None
                self.kth_value = torch.tensor(-torch.inf if self.mode == "max" else torch.inf)
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
    """The checkpoint a run reports: the best monitored one (of the last phase), else the last one; only a file that
    exists (``None``: none was written)."""
    best = [
        cb
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and getattr(cb, "phase", 2) == 2
    ]
    for cb in best:
        if cb.best_model_path and Path(cb.best_model_path).is_file():
            return cb.best_model_path
    for other in trainer.checkpoint_callbacks:
        if isinstance(other, ModelCheckpoint) and other.monitor is None:
            for path in (other.best_model_path, other.last_model_path):
                if path and Path(path).is_file():  # (a resume with nothing left to train wrote none)
                    return path
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on the run folder's own file system.

    Lightning's own write goes through a temporary file in the system's temporary folder and moves it into place; a
    move across file systems is a copy into the final name, so a full disk leaves ``last.ckpt`` half written under
    its real name. Here the bytes go to a temporary file beside the checkpoint (:func:`~brats_lightning.files.
    atomic_path`), renamed onto it only once complete; a write that fails for lack of space (ENOSPC, EDQUOT,
    EFBIG) or permission (EACCES, EROFS) is one line naming the checkpoint, and the previous one is intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(str(path))
        buffer = io.BytesIO()  # serialised first: torch's own file writer reports a full disk as a RuntimeError
        torch.save(checkpoint, buffer)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp, tmp.open("wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise output_error(e, target) from None
