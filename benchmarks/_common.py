"""Shared helpers of the benchmarks: BraTS-size data (real when ../shared/data is there), timing, output."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "data" / "bench_cache"


def brats_root(n: int, synthetic_only: bool = False) -> tuple[Path, str]:
    """A folder of ``n`` BraTS-size cases: the real BraTS 2018 cases of ``../shared/data`` when present,
    else synthetic cases of the same size (240x240x155, 1 mm), generated once into the benchmark cache.

    Returns:
        The folder and a description of it.
    """
    real = SHARED / "brats2018"
    if not synthetic_only and real.is_dir() and len([p for p in real.iterdir() if p.is_dir()]) >= n:
        if n == len([p for p in real.iterdir() if p.is_dir()]):
            return real, f"{n} real BraTS 2018 cases"
        sub = CACHE / f"brats2018-first{n}"
        sub.mkdir(parents=True, exist_ok=True)
        for case in sorted(p for p in real.iterdir() if p.is_dir())[:n]:
            link = sub / case.name
            if not link.exists():
                link.symlink_to(case.resolve())
        return sub, f"{n} real BraTS 2018 cases"
    from brats_lightning.data.synthetic import write_dataset

    folder = CACHE / f"synthetic-brats-size-n{n}"
    write_dataset(folder, n_cases=n, shape=(240, 240, 155), spacing=1.0, seed=0, progress=True)
    return folder, f"{n} synthetic 240x240x155 cases"


def load_test_module(relative: str) -> ModuleType:
    """A module of the test suite (e.g. ``tests/data/symmetry_reference.py``), loaded from its file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1) -> float:
    """Best of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones, in seconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def mean_time(fn: Callable[[], object], device: torch.device | str, repeats: int = 20, warmup: int = 2) -> float:
    """Mean seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (for work whose cost varies)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def train_flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward and backward pass of ``net`` on ``x`` (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        net(x).float().sum().backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned columns (the first left-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def json_line(figures: dict) -> str:
    """The benchmark's figures as one JSON line (the last line of its output)."""
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()})
