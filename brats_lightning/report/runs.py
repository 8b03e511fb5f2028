"""The jobs of a multirun, read as data: each job's setting, test metrics, validation curve and folder."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from brats_lightning.data.labels import REGIONS
from brats_lightning.errors import UserError
from brats_lightning.run_files import MetricsFile, PipelineFile, SummaryFile, read_curve, read_run_file
from brats_lightning.schema import read_yaml
from brats_lightning.viz import group_by_setting

__all__ = ["Run", "by_setting", "collect_runs"]

log = logging.getLogger("brats_lightning.report")
M = TypeVar("M", bound=BaseModel)

_IGNORED = ("data.fold", "experiment", "hydra.", "paths.", "trainer.", "logger", "data.patches_per_epoch", "seed")
#: overrides that choose the method: a setting shows the method's name (``summary.json``) instead
_METHOD_KEYS = ("model=", "havaei=")


@dataclass
class Run:
    """One finished job of a multirun."""

    folder: Path
    setting: str
    fold: int
    metrics: dict
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    slices: Path | None = None


def _setting(overrides: list[str], common: set[str], method: str | None = None) -> str:
    """A setting's name: its overrides that differ between jobs, without the fold; the override that
    chooses the model (``model=``, ``havaei=``) is shown as the method's name (e.g. ``TwoPathCNN*``)."""
    keep = [o for o in overrides if o not in common and not o.lstrip("+~").startswith(_IGNORED)]
    names = [method if method and o.startswith(_METHOD_KEYS) else o for o in sorted(keep)]
    return ", ".join(dict.fromkeys(names)) if names else (method or "default")


def _checked(path: Path, schema: type[M], what: str) -> M | None:
    """A results folder's JSON file checked against its schema (:mod:`brats_lightning.run_files`); ``None``
    when it is missing, or not what a run writes (a warning naming the file and the problem)."""

    if not path.is_file():
        return None
    try:
        return read_run_file(path, schema, what)
    except UserError as e:
        log.warning("%s; not used", e)
        return None


def _method(run_dir: Path) -> str | None:
    """The method's name a run recorded in its ``summary.json`` (``None`` for runs without one)."""
    summary = _checked(run_dir / "summary.json", SummaryFile, "summary")
    return summary.method[:200] if summary is not None and summary.method else None


def _overrides(path: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml``: a list of strings (anything else: none)."""
    try:
        doc = read_yaml(path, "job's overrides")
    except UserError as e:
        log.warning("%s", e)
        return []
    return [o for o in doc if isinstance(o, str)] if isinstance(doc, list) else []


def _last_stage(job: Path) -> Path:
    """A multi-stage job's last stage folder (``pipeline.json``), else the job itself; always inside the job (a
    folder the file names elsewhere is looked for by its name inside the job)."""
    stages = _checked(job / "pipeline.json", PipelineFile, "pipeline description")
    if stages is None or not stages.root:
        return job
    name, last = list(stages.root.items())[-1]
    root = job.resolve()
    for folder in (Path(last.dir), job / Path(last.dir).name, job / name):
        if not folder.is_absolute():
            folder = job / folder
        if folder.is_dir() and folder.resolve().is_relative_to(root):
            return folder
    return job


def _curves(csv_file: Path) -> dict[str, list[tuple[int, float]]]:
    """Validation Dice per region and epoch (``val_curve.csv``, :func:`~brats_lightning.run_files.read_curve`);
    none when the file is missing or not what a run writes (a warning)."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if not csv_file.is_file():
        return out
    try:
        rows = read_curve(csv_file)
    except UserError as e:
        log.warning("%s; its curve is not drawn", e)
        return out
    for row in rows:
        for r in REGIONS:
            v = row.get(f"val/dice_{r}")
            if v is not None:
                out[r].append((row["epoch"], v))
    return out


def collect_runs(multirun: str | Path) -> list[Run]:
    """Every job folder under ``multirun`` that has test metrics (pipeline jobs: their last stage).

    Raises:
        FileNotFoundError: the folder does not exist or holds no finished job.
    """
    root = Path(multirun)
    if not root.is_dir():
        raise FileNotFoundError(f"multirun folder {root} does not exist")
    jobs = [(ov.parent.parent, _overrides(ov)) for ov in sorted(root.glob("*/.hydra/overrides.yaml"))]
    # a job's figures, checked (a job whose metrics.json is not what a run writes is left out, with a warning)
    finished = [
        (job, ovs, figures.root)
        for job, ovs in jobs
        if (job / "metrics.json").is_file()
        and (figures := _checked(job / "metrics.json", MetricsFile, "metrics")) is not None
    ]
    common = set.intersection(*(set(o) for _, o, _ in finished)) if len(finished) > 1 else set()
    runs = []
    for job, overrides, metrics in finished:
        folds = [o.split("=", 1)[1] for o in overrides if o.startswith("data.fold=")]
        fold = int(folds[0]) if folds and folds[0].isdigit() else 0
        last = _last_stage(job)
        slices = last / "test_slices.npz"
        curve = last / "val_curve.csv" if (last / "val_curve.csv").is_file() else last / "csv" / "metrics.csv"
        runs.append(
            Run(
                job,
                _setting(overrides, common, _method(last)),
                fold,
                dict(metrics),
                _curves(curve),
                slices if slices.is_file() else None,
            )
        )
    if not runs:
        raise FileNotFoundError(f"no finished job (with metrics.json) under {root}")
    return runs


def by_setting(runs: list[Run]) -> dict[str, list[Run]]:
    return group_by_setting(runs)  # type: ignore[return-value]  # Run fulfils viz.RunLike
