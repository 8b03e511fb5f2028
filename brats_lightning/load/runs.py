"""Run folders as model sources: the checkpoint a run, a multi-stage job, a multirun or a cross-validation
names.

``predict ckpt_path=<folder>`` and ``report`` find their checkpoints here. Every JSON file of a run folder is
read as data (:func:`~brats_lightning.schema.read_json`), and a path it names is only a path, resolved inside
the folder it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brats_lightning.errors import CheckpointError

__all__ = ["PREDICTOR_FILE", "find_checkpoints", "predictor_checkpoints"]

#: a cross-validation run folder's list of its final predictor's checkpoints (:mod:`brats_lightning.crossval`)
PREDICTOR_FILE = "predictor.json"


def find_checkpoints(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The checkpoints named by ``spec``: files, run folders, or multirun folders (every job's).

    A run folder gives the checkpoint it reported (``summary.json``), else ``checkpoints/best.ckpt``,
    else ``checkpoints/last.ckpt``; a multi-stage job (``pipeline.json``) its last stage's; a
    cross-validation run (``predictor.json``) its fold models; a folder of jobs (a Hydra multirun)
    every job's, in name order.

    Raises:
        CheckpointError: a path that does not exist, or a folder without any checkpoint.
    """
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    found: list[Path] = []
    for item in items:
        path = Path(str(item))
        if path.is_file():
            found.append(path)
        elif path.is_dir() and (path / PREDICTOR_FILE).is_file():  # a cross-validation run: its fold models
            found += predictor_checkpoints(path)
        elif path.is_dir():
            own = _run_checkpoint(path)
            jobs = (
                [] if own else [c for d in sorted(p for p in path.iterdir() if p.is_dir()) if (c := _run_checkpoint(d))]
            )
            if not own and not jobs:
                raise CheckpointError(f"{path}: no checkpoint in this folder (nor in its job folders)")
            found += [own] if own else jobs
        else:
            raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    if not found:
        raise CheckpointError("ckpt_path: no checkpoint given")
    return found


def predictor_checkpoints(run: Path) -> list[Path]:
    """The checkpoints a cross-validation run's ``predictor.json`` lists (paths inside the run folder).

    Raises:
        CheckpointError: the file is not what a run writes, or names a path outside the run or missing.
    """
    from brats_lightning.run_files import PredictorFile, read_run_file

    path = run / PREDICTOR_FILE
    listed = read_run_file(path, PredictorFile, "predictor list").checkpoints
    root = run.resolve()
    found = []
    for rel in listed:
        p = (run / rel).resolve()
        if not p.is_relative_to(root):
            raise CheckpointError(f"{path}: {rel!r} is outside the run folder; it is not loaded")
        if not p.is_file():
            raise CheckpointError(f"{path}: {rel} is missing")
        found.append(run / rel)
    return found


def _inside(run: Path, value: str) -> Path | None:
    """The file a run folder's record names, found inside the run folder only: the path itself when it lies inside,
    else its last components under the run folder (``.../checkpoints/best.ckpt`` of a folder since moved or copied);
    a path outside is never followed (``None``: not found).

    Examples:
        >>> _inside(Path("/nonexistent/run"), "/elsewhere/secret.txt") is None
        True
    """
    root = run.resolve()
    named = Path(value)
    if not named.is_absolute():
        named = run / named
    if named.resolve().is_relative_to(root) and named.is_file():
        return named
    parts = [p for p in Path(value).parts if p not in ("/", "")]
    for k in range(1, len(parts) + 1):
        tail = parts[-k:]
        if ".." in tail:
            break
        candidate = run.joinpath(*tail)
        if candidate.resolve().is_relative_to(root) and candidate.is_file():
            return candidate
    return None


def _run_checkpoint(run: Path) -> Path | None:
    """The checkpoint a run folder reported, or ``None`` when it is not a run folder.

    ``pipeline.json`` and ``summary.json`` are read as data and checked against their schemas
    (:mod:`~brats_lightning.run_files`); what they name is looked for inside the run folder only
    (:func:`_inside`), and the file there is read like any checkpoint.

    Raises:
        CheckpointError: either file is not what a run writes (names the file and the problem).
    """
    from brats_lightning.run_files import PipelineFile, SummaryFile, read_run_file

    def reported(doc_path: Path, schema: type, pick: Callable[[Any], str | None]) -> Path | None:
        if not doc_path.is_file():
            return None
        value = pick(read_run_file(doc_path, schema, doc_path.name))
        return _inside(run, value) if value else None

    def last_stage(stages: PipelineFile) -> str | None:
        return list(stages.root.values())[-1].best_ckpt if stages.root else None

    best = reported(run / "pipeline.json", PipelineFile, last_stage)
    best = best or reported(run / "summary.json", SummaryFile, lambda summary: summary.checkpoint)
    if best is not None:
        return best
    for name in ("best.ckpt", "last.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    return None
