"""The files of a results folder, as schemas: what ``predict``, ``report`` and a cross-validation's model card read
back from a run.

A run folder is data from wherever it was copied: each file is read bounded (:func:`~brats_lightning.schema.
read_json`), checked against its schema here (types, ranges, no unknown keys) and only then used. The schemas are
those of the writers: ``metrics.json`` (:func:`brats_lightning.training.train.train`, a cross-validation's
:func:`~brats_lightning.crossval.run.run_cross_validation`), ``summary.json``
(:func:`~brats_lightning.evaluation.results.summarise` with what its callers add), ``predictor.json``
(:func:`~brats_lightning.crossval.predictor.write_predictor`), ``pipeline.json``
(:func:`~brats_lightning.training.pipeline.run_pipeline`) and ``val_curve.csv``
(:func:`~brats_lightning.training.train.write_curve`). A test keeps them equal to what the writers write
(``tests/test_run_files.py``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel

from brats_lightning.errors import CheckpointError, UserError
from brats_lightning.inference.cleanup import PostprocessOptions
from brats_lightning.schema import Int, Name, Number, Strict, bounded_text, read_json, validate

__all__ = [
    "MetricsFile",
    "PipelineFile",
    "PredictorFile",
    "SummaryFile",
    "read_curve",
    "read_run_file",
]

#: a figure as written: NaN where a metric has no value (an absent region), inf for a HD95 of an empty prediction
Figure = Annotated[float, Field(strict=True)]
#: a figure's or a region's key (``test/dice_wt``, ``cv/hd95_et_ci95_low``, ``time/total_s``, ``wt``)
Key = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_./+-]+$")]
#: free text a run wrote (a method's name, a path, a case's id, why a case was not scored)
Text = Annotated[str, Field(max_length=4096)]
#: the largest validation curve read back (a run of a few hundred epochs is a few kB)
MAX_CURVE_BYTES = 4 * 1024 * 1024

M = TypeVar("M", bound=BaseModel)


class MetricsFile(RootModel[dict[Key, Figure]]):
    """``metrics.json``: flat figures (``test/dice_wt``, ``cv/dice_et_ci95_low``, ``train/steps``, ``time/total_s``)."""

    model_config = ConfigDict(strict=True, frozen=True)


class Stats(Strict):
    """One metric of one region over the cases (:func:`~brats_lightning.evaluation.results.stats`)."""

    mean: Figure
    median: Figure
    std: Figure
    n: Annotated[Int, Field(ge=0, le=10_000_000)]


class Conventions(Strict):
    """The label conventions an evaluation read a case's files in."""

    prediction: Name
    ground_truth: Name


class ChosenCleanup(PostprocessOptions):
    """A cross-validation's chosen clean-up, with the enhancing tumour's threshold when one was chosen
    (:mod:`brats_lightning.crossval.choice`)."""

    et_threshold: Annotated[Number, Field(gt=0, lt=1)] | None = None


class SummaryFile(Strict):
    """``summary.json``: the per-region statistics and what the run that wrote them adds about itself."""

    n_cases: Annotated[Int, Field(ge=0, le=10_000_000)]
    metrics: dict[Key, dict[Key, Stats]]
    # a training's test (train.py) and a cross-validation's figures (crossval/scoring.py, crossval/predictor.py)
    method: Text | None = None
    run: Text | None = None
    checkpoint: Text | None = None
    evaluation: Text | None = None
    folds: Annotated[Int, Field(ge=1, le=1000)] | None = None
    cleanup: ChosenCleanup | None = None
    tta_flips: list[Name] | None = None
    # evaluate (evaluation/folders.py)
    pred_dir: Text | None = None
    gt_dir: Text | None = None
    missing: list[Text] = []
    invalid: dict[Text, Text] = {}
    not_scored: dict[Text, Text] = {}
    conventions: dict[Text, Conventions] = {}
    time_s: Annotated[Number, Field(ge=0)] | None = None


class PredictorFile(Strict):
    """``predictor.json``: a cross-validation's shipped predictor (:func:`~brats_lightning.crossval.predictor.
    write_predictor`): its checkpoints (paths inside the run folder), clean-up, flips and threshold."""

    what: Text = ""
    final: Literal["all", "ensemble"] = "all"
    checkpoints: Annotated[list[Text], Field(min_length=1, max_length=1000)]
    et_threshold: Annotated[Number, Field(gt=0, lt=1)] | None = None
    postprocess: PostprocessOptions | None = None
    tta_flips: list[Name] = []


class PipelineStage(Strict):
    """One stage of ``pipeline.json``: its folder, the overrides it ran with, its best checkpoint and figures."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    # the stage's figures (what train() returns): typed like metrics.json's
    __pydantic_extra__: dict[Key, Figure]

    dir: Text
    overrides: list[Text] = []
    best_ckpt: Text | None = None


class PipelineFile(RootModel[dict[Name, PipelineStage]]):
    """``pipeline.json``: a multi-stage job's stages in the order they ran."""

    model_config = ConfigDict(strict=True, frozen=True)


def read_run_file(
    path: str | Path, schema: type[M], what: str, error: Callable[[str], UserError] = CheckpointError
) -> M:
    """A run folder's JSON file read bounded and checked against ``schema``.

    Raises:
        UserError: (``error``) unreadable, not JSON, too large or deep, or not of the schema: one line naming
            ``path`` and the first problem.
    """
    return validate(schema, read_json(path, what, error), path, error)


class CurvePoint(Strict):
    """A row of ``val_curve.csv``: the epoch and the validation figures of that epoch."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[Key, Figure | None]

    epoch: Annotated[int, Field(ge=0, le=10_000_000)]


def read_curve(path: str | Path, error: Callable[[str], UserError] = CheckpointError) -> list[dict[str, Any]]:
    """``val_curve.csv`` as rows of numbers (``{"epoch": 3, "val/dice_wt": 0.71, ...}``; an empty cell is ``None``).

    Raises:
        UserError: (``error``) too large, or a row that is not an epoch with numbers: names ``path`` and the row.
    """
    path = Path(path)
    text = bounded_text(path, "validation curve", MAX_CURVE_BYTES, error)
    rows = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            values = {str(k): (_number(v) if k != "epoch" else int(v)) for k, v in row.items()}
        except (AttributeError, TypeError, ValueError):
            raise error(f"{path}: line {line}: not an epoch with numbers; not a file brats_lightning wrote") from None
        rows.append(validate(CurvePoint, values, f"{path}: line {line}", error).model_dump())
    return rows


def _number(value: str | None) -> float | None:
    """A CSV cell as a float (empty: ``None``)."""
    if value is None:
        raise ValueError("a short row")
    return float(value) if value.strip() else None
