"""brats_lightning.sweep.optuna_impl: Hydra's sweep syntax as Optuna distributions, and the sweeper's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from brats_lightning.errors import ConfigError
from tests.helpers import requires_sweep_extra

pytestmark = requires_sweep_extra


def test_hydra_sweeps_become_the_optuna_distributions_they_say() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from brats_lightning.sweep.optuna_impl import search_space

    params = {
        "model.lr": "tag(log, interval(1e-4, 1e-2))",
        "data.tumour_fraction": "interval(0.0, 0.8)",
        "model.n_blocks": "int(interval(3, 4))",
        "data.batch_size": "range(4, 17, 4)",
        "model.arch": "choice(fcn, unet)",
        "trainer.max_epochs": "3",
    }
    space, fixed = search_space(params, ["seed=7", "data.tumour_fraction=0.5"])
    assert space == {
        "model.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.n_blocks": IntDistribution(3, 4),
        "data.batch_size": IntDistribution(4, 16, step=4),  # Hydra's range excludes its stop, Optuna's high is in
        "model.arch": CategoricalDistribution(["fcn", "unet"]),
    }
    # a fixed value in params stays fixed; the command line's value for a key replaces its sweep
    assert sorted(fixed) == ["data.tumour_fraction=0.5", "seed=7", "trainer.max_epochs=3"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model.lr": "0.01"}, r"no parameter to search"),
        ({"model.lr": "interval(0.1, 0.01)"}, r"hydra.sweeper.params.model.lr: interval needs low < high"),
        ({"data.batch_size": "range(8, 4)"}, r"hydra.sweeper.params.data.batch_size: range needs start < stop"),
    ],
)
def test_a_search_space_optuna_cannot_sample_is_one_line_naming_the_key(params: dict, message: str) -> None:
    from brats_lightning.sweep.optuna_impl import search_space

    with pytest.raises(ConfigError, match=message):
        search_space(params, [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"search_space": {"x": 1}}, r"hydra.sweeper.search_space is not supported"),
        ({"custom_search_space": "my.module.space"}, r"hydra.sweeper.custom_search_space is not supported"),
        ({"n_jobs": 0}, r"n_jobs >= 1"),
        ({"direction": "maximise"}, r"hydra.sweeper.direction must be maximize or minimize"),
    ],
)
def test_the_sweeper_refuses_what_it_cannot_do_safely(kwargs: dict, message: str) -> None:
    from brats_lightning.sweep.optuna_impl import ResumableOptunaSweeperImpl

    base = {
        "sampler": {"_target_": "optuna.samplers.RandomSampler"},
        "direction": "maximize",
        "storage": "sqlite:///x.db",
        "study_name": "s",
        "n_trials": 2,
        "n_jobs": 1,
        "max_failure_rate": 0.0,
        "params": {"model.lr": "interval(0.001, 0.01)"},
    }
    with pytest.raises(ConfigError, match=message):
        ResumableOptunaSweeperImpl(**(base | kwargs))


def test_the_report_gives_optuna_s_fanova_importances_and_its_plots(tmp_path: Path) -> None:
    import optuna

    from brats_lightning.sweep.report import report

    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    # the objective depends on x only: fANOVA gives x nearly all the importance
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0) ** 2 + 0.0 * t.suggest_float("y", 0.0, 1.0), n_trials=12)
    text = report(tmp_path)
    assert "Parameter importances over 12 complete trials (Optuna's fANOVA evaluator)" in text
    x = float(next(line for line in text.splitlines() if line.strip().startswith("x ")).split()[-1])
    y = float(next(line for line in text.splitlines() if line.strip().startswith("y ")).split()[-1])
    assert x > 0.9 and y < 0.1
    assert (tmp_path / "optuna_report.png").stat().st_size > 5_000
    assert (tmp_path / "optuna_importances.png").stat().st_size > 5_000
