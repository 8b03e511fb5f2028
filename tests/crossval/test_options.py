"""brats_lightning.crossval.options: the budget's split over the folds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from brats_lightning.crossval.options import fold_seconds
from brats_lightning.training.train import main as train_main
from tests.helpers import run_command


def test_fold_time_is_an_even_share_of_what_is_left_less_its_inference() -> None:
    assert fold_seconds(5000.0, 5, 100.0) == 900.0
    assert fold_seconds(100.0, 5, 100.0) == 30.0  # never less than a minimum


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["budget_minutes=0"], "error: budget_minutes=0: the time budget must be positive"),
        (["budget_minutes=-5"], "error: budget_minutes=-5: the time budget must be positive"),
        (["budget_minutes=10", "reserve_minutes=10"], "error: reserve_minutes=10 must be at least 0 and less than"),
        (["budget_minutes=abc"], "error: budget_minutes must be a number of minutes, got 'abc'"),
    ],
)
def test_a_budget_that_cannot_work_is_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    run = run_command(
        train_main,
        "experiment=real_fast",
        f"data.root={tmp_path}",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert run.code == 2, run.err[-2000:]
    assert run.err.strip().splitlines() == [run.err.strip()] and run.err.startswith(message), run.err[-2000:]
    assert not (tmp_path / "cache").exists()


def test_the_training_fingerprint_follows_what_a_fold_keeps_and_nothing_else() -> None:
    """A finished fold keeps its weights and its segmentations: options that change them change the fingerprint
    (a resume in place is refused); where files go, workers and the clean-up's candidates (chosen at the end over
    all the folds) do not."""
    from brats_lightning.config import compose
    from brats_lightning.crossval.options import fingerprint, training_config

    def of(*overrides: str) -> str:
        cfg = compose(["experiment=real_fast", "data.root=/data", "paths.output_dir=/runs/a", *overrides])
        return fingerprint(training_config(cfg))

    base = of()
    # (a run folder moved or copied: its paths follow it)
    moved = "paths.output_dir=/elsewhere/b"
    for same in ("data.cache_dir=/elsewhere", "cv.workers=1", "cv.min_volumes_mm3=[50]", "data.num_workers=0", moved):
        assert of(same) == base, same
    for region in ("cv.keep_within_mm=[5]", "cv.region_components=false", "cv.et_thresholds=[0.3]"):
        assert of(region, "cv.probabilities=true") == of("cv.probabilities=true"), region
    for other in ("model.lr=0.01", "seed=1", "cv.tta_flips=[lr]", "data.tumour_fraction=0.1", "budget_minutes=30"):
        assert of(other) != base, other


def test_a_run_from_before_an_option_was_added_resumes_unless_the_option_is_used(tmp_path: Path) -> None:
    """A run recorded before ``data.exclude`` existed: resuming with the option at its neutral value (``[]``) is the
    same training; with cases excluded it is not, and the refusal names the option."""
    from brats_lightning.config import compose
    from brats_lightning.crossval.options import CVState, fingerprint, training_config
    from brats_lightning.errors import ConfigError

    def config(*overrides: str) -> dict:
        return training_config(compose(["experiment=real_fast", "data.root=/data", *overrides]))

    old = {k: v for k, v in config().items() if k != "data.exclude"}  # what an older version recorded
    state = CVState(tmp_path / "cv_state.json", folds={"0": {"done": True}}, split_hash="s")
    state.config, state.config_hash = old, fingerprint(old)
    now = config()
    assert now["data.exclude"] == [] and fingerprint(now) != state.config_hash
    state.check_resumable("s", fingerprint(now), now)  # resumes
    excluded = config("data.exclude=[Brats18_2013_3_1]")
    with pytest.raises(ConfigError, match=r"trained with other training options \(data.exclude\)"):
        state.check_resumable("s", fingerprint(excluded), excluded)
    lr = config("model.lr=0.01")
    with pytest.raises(ConfigError, match=r"other training options \(.*model.lr"):
        state.check_resumable("s", fingerprint(lr), lr)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"train_s": 1e9}, r"cv_state\.json: folds\.0\.train_s: Input should be less than or equal to"),
        ({"train_s": 1e6}, r"cv_state\.json: folds\.0\.train_s=1000000\.0 is more than the run's whole budget"),
        ({"train_s": "abc"}, r"cv_state\.json: folds\.0\.train_s: Input should be a valid number"),
        ({"train_s": 60, "evil": 1}, r"cv_state\.json: folds\.0\.evil: unknown option"),
    ],
)
def test_a_tampered_cross_validation_state_is_refused_before_training(
    tmp_path: Path, record: dict, message: str
) -> None:
    """``train_s: 1e9`` trained past the budget (the fold trained the recorded seconds); ``"abc"`` was a traceback."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cv_state.json").write_text(json.dumps({"spent_s": 10.0, "folds": {"0": record}}))
    run = run_command(
        train_main,
        "experiment=real_fast",
        "data=synthetic",
        "budget_minutes=2",
        "reserve_minutes=0.5",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert run.code == 2, run.err[-2000:]
    assert len(run.err.strip().splitlines()) == 1 and re.search(message, run.err), run.err[-2000:]
    assert not (tmp_path / "cache").exists() and not (run_dir / "fold_0").exists()
