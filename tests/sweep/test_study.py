"""brats_lightning.sweep.study: resuming a study, one sweep at a time, stable study folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import requires_sweep_extra


def _study(db: Path) -> Any:
    import optuna

    return optuna.load_study(study_name="synthetic_example", storage=f"sqlite:///{db}")


@requires_sweep_extra
def test_resume_study_fails_killed_trials_and_numbers_jobs_after_every_folder(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from brats_lightning.errors import ConfigError
    from brats_lightning.sweep.study import resume_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for job, value in enumerate((0.2, 0.5)):
        trial = study.ask()
        trial.set_user_attr("job", job)
        study.tell(trial, value)
    running = study.ask()  # a trial whose sweep was killed
    running.set_user_attr("job", 2)
    for name in ("0", "1", "2", "7_model.lr=0.01", "notes"):
        (tmp_path / name).mkdir()

    point = resume_study(storage, "s", ["maximize"], tmp_path, ["b=1", "a=2"], "test/dice_mean")
    assert (point.trials, point.complete, point.marked_failed, point.next_job) == (3, 2, (2,), 8)
    states = {t.number: t.state for t in optuna.load_study(study_name="s", storage=storage).get_trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.FAIL}
    assert resume_study(storage, "s", ["maximize"], tmp_path, ["a=2", "b=1"]).marked_failed == ()
    with pytest.raises(ConfigError, match=r"other overrides .*'b=3'.*'b=1'"):
        resume_study(storage, "s", ["maximize"], tmp_path, ["a=2", "b=3"])


@requires_sweep_extra
def test_one_sweep_of_a_folder_at_a_time(tmp_path: Path) -> None:
    from brats_lightning.errors import OutputError
    from brats_lightning.sweep.study import study_lock

    with study_lock(tmp_path):
        with pytest.raises(OutputError, match="another sweep of this study is running"):
            with study_lock(tmp_path):
                pass
    with study_lock(tmp_path):  # released
        pass


@requires_sweep_extra
def test_a_lock_planted_as_a_link_creates_nothing_outside_the_sweep_folder(tmp_path: Path) -> None:
    """Before: ``open(.sweep.lock, "a+")`` followed the link and created the file it named."""
    from brats_lightning.errors import OutputError
    from brats_lightning.sweep.study import LOCK_NAME, study_lock

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    outside = tmp_path / "outside" / "created"
    outside.parent.mkdir()
    (sweep / LOCK_NAME).symlink_to(outside)
    with pytest.raises(OutputError, match=r"\.sweep\.lock: is a link, not the sweep's lock file; remove it"):
        with study_lock(sweep):
            pass
    assert not outside.exists()


@pytest.mark.parametrize(
    ("name", "task", "params"),
    [
        ("synthetic_example", "train", ["data.tumour_fraction", "model.lr"]),
        (
            "real_fast",
            "real_fast",
            ["data.augment_options.strength", "data.tumour_fraction", "model.dice_weight", "model.lr"],
        ),
    ],
)
def test_hparams_search_configs_name_a_stable_study_folder(tmp_path: Path, name: str, task: str, params: list) -> None:
    from omegaconf import OmegaConf

    from brats_lightning.config import compose
    from brats_lightning.data.augment import SliceAugment

    # a trial's values, as the sweeper gives them (composing needs no extra)
    trial = ["model.lr=0.002", "data.tumour_fraction=0.3"]
    if name == "real_fast":
        trial += ["model.dice_weight=1.5", "data.augment_options.strength=1.7", "data.root=/data/x"]
    cfg = compose([f"hparams_search={name}", f"paths.log_dir={tmp_path}", *trial], output_dir=str(tmp_path / "job"))
    h = cfg.hydra
    assert cfg.task_name == task and h.mode.name == "MULTIRUN"
    assert h.sweep.dir == f"{tmp_path}/{task}/sweeps/{name}"  # no date: the same command finds it again
    sweep_node = OmegaConf.to_container(h.sweep)  # unresolved: the job number is known only in a job
    assert isinstance(sweep_node, dict) and sweep_node["subdir"] == "${hydra.job.num}"
    assert h.sweeper.storage == f"sqlite:///{tmp_path}/{task}/sweeps/{name}/optuna.db"
    assert h.sweeper.direction == "maximize" and h.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sorted(h.sweeper.params) == params and "log" in h.sweeper.params["model.lr"]
    assert h.sweeper._target_ == "hydra_plugins.brats_lightning_sweeper.ResumableOptunaSweeper"
    assert cfg.model.lr == 0.002 and cfg.data.tumour_fraction == 0.3
    if name == "real_fast":  # the cross-validation, whose main returns cv/dice_mean
        assert cfg.cross_validation is True and cfg.model.dice_weight == 1.5
        augment = SliceAugment(**cfg.data.augment_options)
        assert augment.strength == 1.7 and augment.intensity and augment.elastic_prob > 0
