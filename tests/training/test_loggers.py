"""The template's loggers (logger=tensorboard, logger=mlflow): a real training records its validation curve in
each, read back with the logger's own reader and compared with ``val_curve.csv``; and ``extras``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from brats_lightning.config import apply_extras, compose
from brats_lightning.errors import ConfigError
from brats_lightning.training.train import train


def _curve(run: Path) -> list[float]:
    rows = list(csv.DictReader((run / "val_curve.csv").open()))
    return [float(r["val/dice_mean"]) for r in sorted(rows, key=lambda r: int(r["epoch"]))]


def _train(tmp_path: Path, cache_dir: Path, logger: str) -> Path:
    run = tmp_path / "run"
    overrides = [
        "debug=default",
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "trainer.limit_train_batches=2",
        "trainer.max_epochs=2",
        "model.width=0.25",
        "test=false",
        f"logger={logger}",
    ]
    train(compose(overrides, output_dir=str(run)))
    return run


def test_tensorboard_records_the_validation_curve(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path, cache_dir, "tensorboard")
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    logged = [e.value for e in acc.Scalars("val/dice_mean")]
    assert logged == pytest.approx(_curve(run), abs=1e-6) and len(logged) == 2


def test_mlflow_records_the_run_offline_in_a_local_store(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = _train(tmp_path, cache_dir, "mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.tags["run_folder"] == str(run) and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "val/dice_mean")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(_curve(run), abs=1e-6)
    assert float(found.data.params["model/lr"]) == pytest.approx(1e-3)  # the run's config, as parameters


def test_extras_print_the_config_tree_and_enforce_tags(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose(["model=fcn_sym", "extras.print_config=true"], output_dir="/tmp/x")
    apply_extras(cfg)
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == "config"
    assert out.index("data") < out.index("model") < out.index("trainer")  # the groups a reader looks for first
    assert "ShenFCN" in out or "FCN + symmetry" in out
    with pytest.raises(ConfigError, match=r"tags is empty and extras.enforce_tags=true"):
        apply_extras(compose(["extras.enforce_tags=true", "extras.print_config=false"], output_dir="/tmp/x"))
    apply_extras(compose(["extras.enforce_tags=true", "extras.print_config=false", "tags=[a]"], output_dir="/tmp/x"))
