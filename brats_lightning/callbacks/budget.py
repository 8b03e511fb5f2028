"""A learning-rate schedule for a wall-clock budget (``trainer.max_time``).

A run stopped by time does not know its number of steps in advance, so a step-based schedule
(cosine over ``max_epochs``) cannot end where the run ends. :class:`BudgetSchedule` sets the
learning rate from the *fraction of the budget spent* (Lightning's ``Timer``, which counts the
validations too): a short linear warm-up, then a cosine decay to a small floor at the budget's end
(Loshchilov & Hutter 2017's cosine annealing, the schedule of most BraTS leaders since, over time
instead of steps). The last, annealed weights are usually the best: Lightning validates once more
when ``max_time`` stops a run mid-epoch, so the best checkpoint sees them.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer

from brats_lightning.errors import ConfigError

__all__ = ["BudgetSchedule", "budget_factor"]


def budget_factor(progress: float, warmup: float = 0.02, floor: float = 0.01) -> float:
    """Learning-rate multiplier at ``progress`` (0..1) of the budget: linear warm-up, then cosine to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return floor + (1.0 - floor) * progress / warmup
    t = (progress - warmup) / max(1.0 - warmup, 1e-12)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class BudgetSchedule(Callback):
    """Anneals every optimizer's learning rate over the time budget (``trainer.max_time``).

    Args:
        warmup: fraction of the budget spent warming up linearly from ``floor``.
        floor: the multiplier of the base learning rate at the start and at the end.

    The base learning rates (the optimizers' own) are kept in the callback's state, so a resumed run
    (whose ``Timer`` resumes too) continues the same curve.
    """

    def __init__(self, warmup: float = 0.02, floor: float = 0.01) -> None:
        if not 0.0 <= warmup < 1.0 or not 0.0 <= floor <= 1.0:
            raise ConfigError(f"BudgetSchedule: warmup must be in [0, 1) and floor in [0, 1], got {warmup}, {floor}")
        self.warmup, self.floor = float(warmup), float(floor)
        self.base_lrs: list[list[float]] | None = None

    @staticmethod
    def _timer(trainer: pl.Trainer) -> Timer:
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, Timer):
                return cb
        raise ConfigError("the budget learning-rate schedule needs a time budget: set trainer.max_time")

    def progress(self, trainer: pl.Trainer) -> float:
        """The fraction of the time budget spent so far."""
        timer = self._timer(trainer)
        elapsed = timer.time_elapsed("train")
        remaining = timer.time_remaining("train")
        total = elapsed + (remaining if remaining is not None else 0.0)
        return elapsed / total if total > 0 else 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._timer(trainer)
        if self.base_lrs is None:
            self.base_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self.base_lrs is not None
        factor = budget_factor(self.progress(trainer), self.warmup, self.floor)
        for opt, bases in zip(trainer.optimizers, self.base_lrs):
            for group, base in zip(opt.param_groups, bases):
                group["lr"] = base * factor
        pl_module.log("train/lr", self.base_lrs[0][0] * factor, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = state_dict.get("base_lrs")
