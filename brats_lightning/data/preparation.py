"""Preparing a data set into the cache: a pool of processes, a progress bar, one bad case never stopping the
others; and a cascade's frozen first-stage maps, computed once per first stage (:mod:`.cache` is the format)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from brats_lightning.data.cache import PreparedCase, is_fresh, prepare_case, write_cache_config
from brats_lightning.data.labels import LabelConvention
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig
from brats_lightning.data.readers import CaseFiles
from brats_lightning.errors import DataError
from brats_lightning.files import remove_stale_temporaries

__all__ = ["available_cores", "first_stage_maps", "prepare_cases", "prepare_missing", "progress_bar"]

log = logging.getLogger("brats_lightning.data")


def progress_bar(description: str, total: int) -> tuple[Progress, TaskID]:
    """A rich progress bar (description, bar, done / total, time left) and its task."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    return progress, progress.add_task(description, total=total)


_IN_WORKER = False


def _init_worker(threads: int) -> None:
    """A preparation worker: its share of the cores for torch (symmetry maps) and ITK (N4)."""
    global _IN_WORKER
    _IN_WORKER = True
    torch.set_num_threads(threads)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except ImportError:  # pragma: no cover - SimpleITK is a dependency
        pass


def _prepare_one(args: tuple) -> tuple[str, str | None]:
    case, folder, convention, prep, sym = args
    if _IN_WORKER:  # a forked worker cannot use CUDA: symmetry maps on its CPU share
        sym = sym.replace(device="cpu")
    try:
        prepare_case(case, folder, convention, prep, sym)
        return case.case_id, None
    except DataError as e:
        return case.case_id, str(e)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def prepare_cases(
    cases: Sequence[CaseFiles],
    out_dir: Path,
    convention: LabelConvention,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
    workers: int = 1,
    advance: Callable[[], None] | None = None,
) -> dict[str, str]:
    """Prepare ``cases`` into ``out_dir/<case_id>`` with a pool of ``workers`` processes.

    One worker runs in this process (with every thread); several are forked processes with one
    thread each, as PyTorch's loader workers (forking is safe after torch has run only so, and it
    does not re-import the caller's script the way ``spawn`` does). A case that fails does not stop
    the others.

    Returns:
        case id -> reason, for the cases that could not be prepared.
    """
    jobs = [(c, out_dir / c.case_id, convention, prep, sym) for c in cases]
    failed: dict[str, str] = {}
    workers = max(1, min(int(workers), len(jobs)))
    if workers == 1:
        results = map(_prepare_one, jobs)
        for case_id, error in results:
            if error:
                failed[case_id] = error
            if advance:
                advance()
        return failed
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    threads = 1 if "fork" in methods else max(1, available_cores() // workers)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        for case_id, error in pool.map(_prepare_one, jobs):
            if error:
                failed[case_id] = error
            if advance:
                advance()
    return failed


def prepare_missing(
    cases: Sequence[CaseFiles],
    out: Path,
    config: dict[str, Any],
    convention: LabelConvention,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
    workers: int,
    rank: int = 0,
    world: int = 1,
    name: str = "",
) -> None:
    """Prepare this rank's share of the ``cases`` that are not in ``out`` yet (with a progress bar).

    Args:
        cases: every case of the data set.
        out: the prepared folder; its ``config.json`` is ``config`` (:func:`~.cache.cache_config`).
        config: what determines the prepared arrays (the folder's ``config.json``).
        convention: the label convention of the cases.
        prep: the preprocessing.
        sym: the symmetry maps' options.
        workers: processes preparing cases (at most one per case).
        rank: this process's rank (under DDP: its share of the cases).
        world: the number of ranks sharing the cases.
        name: the data set's name, in the progress bar.

    Raises:
        DataError: some cases could not be prepared (every one named with its reason; the others are done).
    """
    for left in remove_stale_temporaries(out):  # a killed preparation's half-written case folders
        log.info("Removed %s, left by a preparation that was killed", left)
    todo = [c for c in cases if not is_fresh(out / c.case_id, c)][rank::world]
    if todo or out.is_dir():  # (also a folder prepared before config.json was written)
        write_cache_config(out, config)
    if not todo:
        return
    workers = min(int(workers), len(todo))
    log.info(
        "Preparing %d of %d cases of %s into %s (%d worker%s%s)",
        len(todo),
        len(cases),
        name,
        out,
        workers,
        "s" if workers > 1 else "",
        f", rank {rank} of {world}" if world > 1 else "",
    )
    progress, task = progress_bar(f"Preparing {name}", len(todo))
    with progress:
        failed = prepare_cases(todo, out, convention, prep, sym, workers, lambda: progress.advance(task))
    for case_id, why in failed.items():
        log.error("%s: not prepared (%s)", case_id, why)
    if failed:
        raise DataError(
            f"{len(failed)} of {len(cases)} cases could not be prepared (the others are in {out}):\n"
            + "\n".join(f"  - {why}" for why in failed.values())
        )


def first_stage_maps(
    cases: Sequence[PreparedCase],
    first_stage: Callable[[torch.Tensor], torch.Tensor],
    folder: Path,
    margin: int,
    device: torch.device | str = "cpu",
    batch_slices: int = 8,
    rank: int = 0,
    world: int = 1,
) -> list[Path]:
    """A cascade's frozen first-stage maps of ``cases``, computed once into ``folder`` (Havaei et al. Sec. 3.2).

    ``first_stage`` maps slices ``(N, C, X, Y)`` to ``(N, K, X + 2*margin, Y + 2*margin)`` probabilities.
    Maps are float16 ``.npy`` files, written atomically; this rank computes its share of those missing.

    Returns:
        The map files, in the order of ``cases``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{c.case_id}.npy" for c in cases]
    todo = [(c, p) for c, p in zip(cases, paths) if not p.is_file()][rank::world]
    if not todo:
        return paths
    progress, task = progress_bar("First-stage maps", sum(len(c.brain_slices) for c, _ in todo))
    with progress, torch.no_grad():
        for c, path in todo:
            z, _, nx, ny = c.shape
            probs = None
            brain = c.brain_slices
            for s in range(0, len(brain), batch_slices):
                idx = brain[s : s + batch_slices]
                x = torch.from_numpy(np.asarray(c.image[idx], dtype=np.float32)).to(device)
                p = first_stage(x).float().cpu().numpy().astype(np.float16)
                if probs is None:
                    probs = np.zeros((z, p.shape[1], nx + 2 * margin, ny + 2 * margin), np.float16)
                    probs[:, 0] = 1.0  # slices without brain: background
                probs[idx] = p
                progress.advance(task, len(idx))
            assert probs is not None, f"{c.case_id}: a prepared case without brain slices"
            tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npy")
            np.save(tmp, probs)
            tmp.replace(path)
    return paths
