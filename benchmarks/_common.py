"""Shared helpers of the benchmarks: BraTS-size data (real when ../shared/data is there), timing, output."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from brats_lightning.stats import Estimate, ratio_interval

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


def paired_ratio(
    slow: Callable[[], object], fast: Callable[[], object], device: torch.device | str = "cpu", pairs: int = 5
) -> Estimate:
    """``slow``'s seconds over ``fast``'s, timed in turn (slow, fast, slow, fast...) after one warm-up call of
    each, so that a drift of the machine falls on both: the geometric mean of the pairs' ratios with its 95%
    interval (:func:`brats_lightning.stats.ratio_interval`, ``pairs`` pairs)."""
    slow()
    fast()
    a, b = [], []
    for _ in range(pairs):
        for fn, out in ((slow, a), (fast, b)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    return ratio_interval(a, b)


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


#: one recorded convolution: the ``aten.convolution`` arguments that decide its speed
ConvCall = tuple[Any, ...]


#: the composite convolutions (not decomposed under inference mode before they reach a dispatch mode)
_CONVS = {torch.ops.aten.conv1d, torch.ops.aten.conv2d, torch.ops.aten.conv3d, torch.ops.aten.conv_transpose2d}


class _ConvRecorder(TorchDispatchMode):
    """Records every ``aten.convolution`` that runs under it (shapes, strides, dtypes, options)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[ConvCall, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, w, b, *options = args
            spec = tuple((tuple(t.shape), tuple(t.stride()), t.dtype) for t in (x, w)) + (
                None if b is None else (tuple(b.shape), b.dtype),
                *(tuple(o) if isinstance(o, (list, tuple)) else o for o in options),
            )
            self.calls[spec] = self.calls.get(spec, 0) + 1
        elif func._overloadpacket in _CONVS:  # conv2d and the like under inference mode: into aten.convolution
            with self:
                out = func.decompose(*args, **(kwargs or {}))
                if out is not NotImplemented:
                    return out
        return func(*args, **(kwargs or {}))


def conv_calls(fn: Callable[[], object]) -> list[ConvCall]:
    """The distinct convolutions ``fn`` runs (as dispatched: after autocast, in their memory layout)."""
    with _ConvRecorder() as recorder:
        fn()
    return list(recorder.calls)


def describe_conv(call: ConvCall) -> str:
    """``64->64 3x3 on 8x144x192 stride 1 (bfloat16)``: a recorded convolution in words."""
    (xs, _, dtype), (ws, _, _), _, stride, padding, *_ = call
    kind = str(dtype).removeprefix("torch.")
    return f"{ws[1]}->{ws[0]} {ws[2]}x{ws[3]} on {xs[0]}x{xs[2]}x{xs[3]} stride {stride[0]} ({kind})"


def conv_rate(call: ConvCall, device: str = "cpu") -> float:
    """GFLOP/s of one recorded convolution replayed alone on random tensors of its shapes, strides and dtypes."""
    from torch.utils.flop_counter import FlopCounterMode

    (xs, xst, xd), (ws, wst, wd), bias, *options = call
    gen = torch.Generator().manual_seed(0)

    def tensor(shape: tuple, stride: tuple, dtype: torch.dtype) -> torch.Tensor:
        t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        return t.copy_(torch.randn(shape, generator=gen))

    x, w = tensor(xs, xst, xd), tensor(ws, wst, wd)
    b = None if bias is None else torch.randn(bias[0], generator=gen).to(device, bias[1])

    def run() -> None:
        with torch.inference_mode():
            torch.ops.aten.convolution(x, w, b, *options)

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops()) / best_time(run, device) / 1e9


def large_conv(device: str, bf16: bool) -> ConvCall:
    """The classic large convolution (64->64 3x3 on 8x64x144x192, channels-last) as a recorded call."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(8, 64, 144, 192, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            conv(x)

    return conv_calls(run)[0]


def conv_ceiling_over(calls: list[ConvCall], device: str = "cpu") -> tuple[float, str, dict[ConvCall, float]]:
    """The best rate over a set of convolutions (every layer shape of the nets compared, and the large one).

    A net's rate (its FLOPs over its time) cannot exceed the fastest of its own layers, so this is a ceiling for
    every net whose layers are in ``calls``; a net measured above it (timing noise) is refused by
    :func:`fraction_of`.

    Returns:
        The best GFLOP/s, the convolution that reached it (described), and every convolution's GFLOP/s.
    """
    rates = {c: conv_rate(c, device) for c in dict.fromkeys(calls)}
    best = max(rates, key=rates.__getitem__)
    return rates[best], describe_conv(best), rates


def fraction_of(rate: float, bound: float, what: str) -> float:
    """``rate / bound``, refused above 1: a bound that a measurement beats is not a bound.

    Raises:
        SystemExit: naming the rate and the bound, when ``rate > bound``.
    """
    if rate > bound:
        raise SystemExit(
            f"{what}: {rate:.0f} GFLOP/s measured above its bound {bound:.0f} GFLOP/s; not printing a fraction above 1 "
            "(the bound misses a shape, or the machine was busy while it was timed: run again alone)"
        )
    return rate / bound


def _cpu_fields() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


#: a chain of dependent register adds (one cycle each on x86): cycles counted by the clock
_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec a, b;
    unsigned long n = 200000000UL, x = 0, one = 1;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (unsigned long i = 0; i < n; i++)
            __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                             "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(one));
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ghz = 8.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9) / 1e9;
        if (ghz > best) best = ghz;
    }
    printf("%.4f %lu\n", best, x);
    return 0;
}
"""


def running_clock_ghz() -> float | None:
    """The core clock while running, measured: a chain of 1.6 billion dependent adds (one cycle each) timed,
    the best of 3 (compiled with the machine's C compiler); ``None`` off x86 or without a compiler."""
    import platform
    import shutil
    import subprocess
    import tempfile

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run([compiler, "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    return float(out.split()[0])


def cpu_peak(threads: int) -> dict[str, Any] | None:
    """The CPU's theoretical peak for the cores used: FLOP per cycle per core x clock x cores.

    FLOP per cycle per core from the ISA the CPU reports (``/proc/cpuinfo`` flags, vendor and family), the largest
    of its family, from the vendors' optimisation manuals: fp32 FMA 2 units x 16 lanes x 2 (AVX-512; AMD Zen 4,
    family 25, runs 512-bit FMA as two halves: 32), 32 with AVX2 + FMA; bf16 1024 with AMX (a 16x32 by 32x16 tile
    product every 16 cycles), 128 with AVX-512 bf16 dot products (64 on Zen 4), else the fp32 figure. The clock
    is the highest of those the CPU reports (``cpuinfo_max_freq``, ``cpu MHz``: on a VM often the base clock,
    below the boost) and the running clock measured by :func:`running_clock_ghz`; when a measurement still beats
    the peak, the peak is not printed as a bound.

    Returns:
        ``fp32`` and ``bf16`` GFLOP/s, ``flop_per_cycle``, ``clock_ghz``, ``cores`` and ``source``; ``None`` off
        x86 Linux (nothing reported).
    """
    info = _cpu_fields()
    flags = set(info.get("flags", "").split())
    if not flags:
        return None
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    amd = vendor == "AuthenticAMD"
    if "avx512f" in flags:
        fp32 = 32 if amd and family <= 25 else 64
    elif "avx2" in flags and "fma" in flags:
        fp32 = 32
    else:
        fp32 = 16 if "avx" in flags else 8
    if "amx_bf16" in flags:
        bf16 = 1024
    elif "avx512_bf16" in flags:
        bf16 = 64 if amd and family <= 25 else 128
    else:
        bf16 = fp32
    clocks = {"cpu MHz": float(info.get("cpu MHz", "0") or 0) / 1000}
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.is_file():
        clocks["cpuinfo_max_freq"] = int(max_freq.read_text()) / 1e6
    running = running_clock_ghz()
    if running is not None:
        clocks["measured running clock"] = running
    clock_source, clock_ghz = max(clocks.items(), key=lambda kv: kv[1])
    if clock_ghz <= 0:
        return None
    physical = int(info.get("cpu cores", "0") or 0) or (os.cpu_count() or 1)
    cores = max(1, min(threads, physical))
    model = re.sub(r"\s+", " ", info.get("model name", "?"))
    return {
        "fp32": fp32 * clock_ghz * cores,
        "bf16": bf16 * clock_ghz * cores,
        "flop_per_cycle": {"fp32": fp32, "bf16": bf16},
        "clock_ghz": clock_ghz,
        "cores": cores,
        "source": f"{model}, {vendor} family {family}, clock: {clock_source}",
        "clocks_ghz": clocks,
    }


def peak_line(peak: dict[str, Any] | None, ceiling: dict[str, float]) -> str:
    """One line: the theoretical peak beside the measured ceiling, with the ceiling's fraction of it (not printed,
    with the reason, when the ceiling beats the peak)."""
    if peak is None:
        return "Theoretical peak: unknown (the CPU reports no ISA flags or clock)"
    parts = []
    for p in ("fp32", "bf16"):
        if p not in ceiling:
            continue
        head = (
            f"{p} {peak[p]:.0f} GFLOP/s ({peak['flop_per_cycle'][p]} FLOP/cycle x {peak['clock_ghz']:.2f} GHz x "
            f"{peak['cores']} cores)"
        )
        if ceiling[p] > peak[p]:
            parts.append(f"{head}: below the measured ceiling, so the reported clock is not the running one")
        else:
            parts.append(f"{head}, the ceiling {ceiling[p] / peak[p]:.0%} of it")

    return f"Theoretical peak ({peak['source']}): " + "; ".join(parts)
