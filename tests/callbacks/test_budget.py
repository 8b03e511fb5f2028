"""brats_lightning.callbacks.budget: the learning rate over a time budget."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from brats_lightning.callbacks.budget import BudgetSchedule, budget_factor
from brats_lightning.errors import ConfigError


def test_budget_factor_warms_up_then_anneals_to_the_floor() -> None:
    assert budget_factor(0.0, 0.1, 0.01) == pytest.approx(0.01)
    assert budget_factor(0.1, 0.1, 0.01) == pytest.approx(1.0)
    assert budget_factor(0.55, 0.1, 0.01) == pytest.approx(0.505)  # half-way through the cosine
    assert budget_factor(1.0, 0.1, 0.01) == pytest.approx(0.01)
    assert budget_factor(2.0, 0.1, 0.01) == pytest.approx(0.01)
    after = [budget_factor(x, 0.1, 0.01) for x in np.linspace(0.1, 1, 50)]
    assert all(a >= b for a, b in itertools.pairwise(after))


class _RecordLR(BudgetSchedule):
    """The schedule, recording (progress, lr) at every step."""

    def __init__(self) -> None:
        super().__init__(warmup=0.0, floor=0.0)
        self.seen: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        before = self.progress(trainer)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.seen.append((before, self.progress(trainer), trainer.optimizers[0].param_groups[0]["lr"]))


def test_the_schedule_follows_the_time_spent_in_a_real_run(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    rec = _RecordLR()
    model = FCNModule(4, 4, width=0.25, lr=0.01, test_hd95=False)
    trainer = tiny_trainer(tmp_path, epochs=-1, callbacks=[rec], max_time={"seconds": 6})
    trainer.fit(model, datamodule=BratsDataModule(**tiny_dm_kwargs))
    before, after, lrs = np.array(rec.seen).T
    assert len(lrs) > 5 and np.all(np.diff(before) > 0)
    # (a step may start just after the budget ran out, before Lightning stops: the schedule holds its end)
    cosine = lambda p: 0.01 * 0.5 * (1 + np.cos(np.pi * np.minimum(p, 1.0)))  # noqa: E731
    # the rate set at each step is the cosine of the budget's fraction spent at that moment
    assert np.all(cosine(after) <= lrs + 1e-12) and np.all(lrs <= cosine(before) + 1e-12)
    assert lrs[-1] < 0.1 * lrs[0]  # annealed by the end of the budget


def test_a_schedule_without_a_time_budget_is_a_config_error(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    trainer = tiny_trainer(tmp_path, callbacks=[BudgetSchedule()], limit_train_batches=1)
    with pytest.raises(ConfigError, match="max_time"):
        trainer.fit(FCNModule(4, 4, width=0.25), datamodule=BratsDataModule(**tiny_dm_kwargs))
