"""brats_lightning.run_files: a results folder's files checked by the schemas of their writers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from brats_lightning.errors import CheckpointError
from brats_lightning.load.runs import find_checkpoints
from brats_lightning.report.runs import collect_runs


def _jobs(multirun: Path) -> list[Path]:
    return sorted(j for j in multirun.iterdir() if (j / ".hydra").is_dir())


def test_what_a_multirun_writes_is_what_the_schemas_accept(multirun: Path) -> None:
    """The writers' own files (4 real jobs: training, test, W&B) pass their schemas, with the values written."""
    from brats_lightning.run_files import MetricsFile, SummaryFile, read_curve, read_run_file

    for job in _jobs(multirun):
        metrics = read_run_file(job / "metrics.json", MetricsFile, "metrics").root
        assert metrics == json.loads((job / "metrics.json").read_text())
        assert 0.0 <= metrics["test/dice_wt"] <= 1.0
        summary = read_run_file(job / "summary.json", SummaryFile, "summary")
        assert summary.checkpoint and Path(summary.checkpoint).is_file()
        assert summary.metrics["wt"]["dice"].mean == pytest.approx(metrics["test/dice_wt"])
        curve = read_curve(job / "val_curve.csv")
        assert [row["epoch"] for row in curve] == sorted(row["epoch"] for row in curve)
        assert all(0.0 <= row["val/dice_wt"] <= 1.0 for row in curve)


@pytest.mark.parametrize(
    ("doc", "content", "problem"),
    [
        ("summary.json", {"n_cases": 1, "metrics": {}, "checkpoint": 3}, "checkpoint: Input should be a valid string"),
        ("summary.json", {"checkpoint": "checkpoints/best.ckpt"}, "n_cases: Field required"),
        ("pipeline.json", {"a": {"dir": ".", "best_ckpt": ["x"]}}, r"a.best_ckpt: Input should be a valid string"),
        ("pipeline.json", {"a": {"dir": ".", "test/dice_wt": "hi"}}, r"a.test/dice_wt: Input should be a valid number"),
        ("pipeline.json", {"a": "checkpoints/best.ckpt"}, "a: Input should be a valid dictionary"),
        ("predictor.json", {"checkpoints": ["fold_0/last.ckpt"], "evil": 1}, "evil: unknown option"),
        (
            "predictor.json",
            {"checkpoints": ["fold_0/last.ckpt"], "postprocess": {"_target_": "os.system"}},
            "postprocess._target_: unknown option",
        ),
        ("predictor.json", {"checkpoints": []}, "checkpoints: List should have at least 1 item"),
    ],
)
def test_a_tampered_run_file_is_named_and_refused_by_predict(
    tmp_path: Path, doc: str, content: dict, problem: str
) -> None:
    """Before: ``predict ckpt_path=<run>`` read one value of each file and ignored the rest: a summary or pipeline
    file of the wrong shape fell back to another checkpoint silently, and a predictor list's unknown keys and
    clean-up were not checked. Now each is checked by its writer's schema: one line naming the file and the key."""
    run = tmp_path / "run"
    for ckpt in ("checkpoints/best.ckpt", "fold_0/last.ckpt"):
        (run / ckpt).parent.mkdir(parents=True, exist_ok=True)
        (run / ckpt).write_bytes(b"x")
    (run / doc).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=rf"^{run / doc}: {problem}"):
        find_checkpoints(run)


def _copy(multirun: Path, dest: Path) -> list[Path]:
    for job in _jobs(multirun):
        shutil.copytree(job, dest / job.name, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    return _jobs(dest)


def test_report_leaves_out_a_job_whose_files_are_not_what_a_run_writes(
    multirun: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a ``metrics.json`` entry that was not a number was dropped silently (the job reported without it),
    and a ``val_curve.csv`` row with a non-numeric epoch ended ``report`` with a ``ValueError`` traceback. Now
    the job whose figures are tampered is left out with a warning naming the file, and a bad curve is not drawn."""
    jobs = _copy(multirun, tmp_path / "m")
    bad_metrics, bad_curve = jobs[0], jobs[1]
    figures = json.loads((bad_metrics / "metrics.json").read_text())
    (bad_metrics / "metrics.json").write_text(json.dumps({**figures, "test/dice_et": "0.99"}))
    (bad_curve / "val_curve.csv").write_text("epoch,val/dice_wt\n0,0.5\nlast,0.9\n")
    with caplog.at_level(logging.WARNING, logger="brats_lightning.report"):
        runs = {r.folder.name: r for r in collect_runs(tmp_path / "m")}
    assert set(runs) == {j.name for j in jobs[1:]}
    assert f"{bad_metrics / 'metrics.json'}: test/dice_et: Input should be a valid number" in caplog.text
    assert f"{bad_curve / 'val_curve.csv'}: line 3: not an epoch with numbers" in caplog.text
    assert not runs[bad_curve.name].curves
    assert runs[jobs[2].name].curves["wt"]  # the others keep theirs
    assert runs[jobs[2].name].metrics == json.loads((jobs[2] / "metrics.json").read_text())


def test_report_reads_a_pipelines_last_stage_only_inside_the_job(multirun: Path, tmp_path: Path) -> None:
    """Before: ``pipeline.json``'s last stage ``dir`` was followed wherever it named (a folder outside the job,
    whose summary and curve then named the job's method and drew its curve). Now the stage is looked for inside the
    job only: by the named folder's name, then the stage's."""
    jobs = _copy(multirun, tmp_path / "m")
    job = jobs[0]
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "stage").mkdir(parents=True)
    summary = json.loads((job / "summary.json").read_text())
    (elsewhere / "stage" / "summary.json").write_text(json.dumps({**summary, "method": "NOT THIS JOB'S"}))
    (elsewhere / "stage" / "val_curve.csv").write_text("epoch,val/dice_wt\n0,0.123\n")
    (job / "pipeline.json").write_text(json.dumps({"stage": {"dir": str(elsewhere / "stage")}}))
    run = {r.folder.name: r for r in collect_runs(tmp_path / "m")}[job.name]
    assert "NOT THIS JOB'S" not in run.setting
    assert (0, pytest.approx(0.123)) not in run.curves["wt"]
    # the same stage copied into the job is the one read
    shutil.copytree(elsewhere / "stage", job / "stage")
    run = {r.folder.name: r for r in collect_runs(tmp_path / "m")}[job.name]
    assert "NOT THIS JOB'S" in run.setting
    assert run.curves["wt"] == [(0, pytest.approx(0.123))]


def test_a_predictor_list_must_name_checkpoints_and_a_valid_clean_up(tmp_path: Path) -> None:
    """What ``write_predictor`` writes passes; a threshold outside (0, 1) and an unknown flip name do not."""
    from brats_lightning.run_files import PredictorFile, read_run_file

    doc = {
        "what": "one model",
        "final": "all",
        "checkpoints": ["final/checkpoints/last.ckpt"],
        "et_threshold": 0.4,
        "postprocess": {"min_volume_mm3": 0.0, "largest_only": True, "tc": {"min_volume_mm3": 500.0}},
        "tta_flips": ["lr", "ap"],
    }
    path = tmp_path / "predictor.json"
    path.write_text(json.dumps(doc))
    assert read_run_file(path, PredictorFile, "predictor").postprocess.tc.min_volume_mm3 == 500.0  # type: ignore[union-attr]
    for key, value, problem in (
        ("et_threshold", 1.5, "et_threshold: Input should be less than 1"),
        ("tta_flips", ["lr", "../x"], "tta_flips.1: String should match pattern"),
        ("final", "best", "final: Input should be 'all' or 'ensemble'"),
    ):
        path.write_text(json.dumps({**doc, key: value}))
        with pytest.raises(CheckpointError, match=rf"^{path}: {problem}"):
            read_run_file(path, PredictorFile, "predictor")


def test_a_pipeline_file_of_a_real_two_stage_job_passes(tmp_path: Path) -> None:
    """The schema of ``pipeline.json`` accepts what ``run_pipeline`` writes: checked in the pipeline's own test
    (``tests/training/test_pipeline.py``); here the stage's figures are typed like ``metrics.json``'s."""
    from brats_lightning.run_files import PipelineFile, read_run_file

    path = tmp_path / "pipeline.json"
    stage = {"dir": str(tmp_path / "a"), "overrides": ["x=1"], "best_ckpt": None, "test/dice_wt": 0.5}
    path.write_text(json.dumps({"a": stage, "b": {**stage, "time/total_s": 3.0}}))
    stages = read_run_file(path, PipelineFile, "pipeline").root
    assert list(stages) == ["a", "b"] and stages["b"].model_extra == {"test/dice_wt": 0.5, "time/total_s": 3.0}
