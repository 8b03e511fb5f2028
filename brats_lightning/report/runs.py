"""The jobs of a multirun, read as data: each job's setting, test metrics, validation curve and folder."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from brats_lightning.data.labels import REGIONS
from brats_lightning.errors import UserError
from brats_lightning.schema import read_json, read_yaml
from brats_lightning.viz import group_by_setting

__all__ = ["Run", "by_setting", "collect_runs"]

log = logging.getLogger("brats_lightning.report")

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


def _json(path: Path, what: str) -> object | None:
    """A JSON file of a results folder as plain data, ``None`` when it is missing or not usable."""

    if not path.is_file():
        return None
    try:
        return read_json(path, what)
    except UserError as e:
        log.warning("%s", e)
        return None


def _method(run_dir: Path) -> str | None:
    """The method's name a run recorded in its ``summary.json`` (``None`` for runs without one)."""
    summary = _json(run_dir / "summary.json", "summary")
    method = summary.get("method") if isinstance(summary, dict) else None
    return method[:200] if isinstance(method, str) else None


def _numbers(doc: object) -> dict[str, float]:
    """The numeric entries of a ``metrics.json`` (anything else is dropped)."""
    if not isinstance(doc, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in doc.items()
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _overrides(path: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml``: a list of strings (anything else: none)."""
    try:
        doc = read_yaml(path, "job's overrides")
    except UserError as e:
        log.warning("%s", e)
        return []
    return [o for o in doc if isinstance(o, str)] if isinstance(doc, list) else []


def _last_stage(job: Path) -> Path:
    """A multi-stage job's last stage folder (``pipeline.json``), else the job itself; always inside the job."""
    stages = _json(job / "pipeline.json", "pipeline description")
    if not isinstance(stages, dict) or not stages:
        return job
    name, last = list(stages.items())[-1]
    folder = Path(last["dir"]) if isinstance(last, dict) and isinstance(last.get("dir"), str) else None
    if folder is not None and folder.is_dir():
        return folder
    local = job / str(name)
    return local if local.is_dir() and local.resolve().is_relative_to(job.resolve()) else job


def _curves(csv_file: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if not csv_file.is_file():
        return out
    with csv_file.open() as f:
        for row in csv.DictReader(f):
            for r in REGIONS:
                v = row.get(f"val/dice_{r}")
                if v:
                    out[r].append((int(row["epoch"]), float(v)))
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
    jobs = [(job, ovs) for job, ovs in jobs if (job / "metrics.json").is_file()]
    common = set.intersection(*(set(o) for _, o in jobs)) if len(jobs) > 1 else set()
    runs = []
    for job, overrides in jobs:
        metrics_file = job / "metrics.json"
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
                _numbers(_json(metrics_file, "metrics")),
                _curves(curve),
                slices if slices.is_file() else None,
            )
        )
    if not runs:
        raise FileNotFoundError(f"no finished job (with metrics.json) under {root}")
    return runs


def by_setting(runs: list[Run]) -> dict[str, list[Run]]:
    return group_by_setting(runs)  # type: ignore[return-value]  # Run fulfils viz.RunLike
