"""Random streams that are functions of the position in training, so that resumed runs repeat uninterrupted ones.

Every stream of a run (data order, crop positions, patch draws, slice augmentation, dropout) is
seeded from the run's seed and its position: the epoch, the item or batch, the rank. A run killed
and resumed from ``last.ckpt`` then draws exactly what an uninterrupted run would, whatever the
number of loader workers, and every DDP rank draws its own.
"""

from __future__ import annotations

import numpy as np

__all__ = ["training_epoch", "stream_seed"]


def training_epoch(trainer: object | None) -> int:
    """The epoch being trained: the epoch Lightning gives samplers (``fit_loop.epoch_progress.current.processed``).

    Unlike ``trainer.current_epoch`` it is already right when a resumed run builds its first
    iterator, before Lightning has advanced ``current_epoch`` past the restored epoch. 0 without a trainer.
    """
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]


def stream_seed(*keys: int) -> int:
    """A 32-bit seed derived from ``keys`` (e.g. ``seed, epoch, batch, rank``) by NumPy's ``SeedSequence``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
