"""Benchmark: symmetry maps of one 4x240x240x155 volume, vectorised vs per-pixel loop.

Usage::

    python benchmarks/bench_symmetry.py [--case DIR] [--threads N] [--loop-slices K] [--device cpu|cuda]

Uses the first real BraTS 2018 case of ``../shared/data/brats2018`` when present, else a synthetic
240x240x155 case. Prints a table: the vectorised maps of the whole volume (axis estimation,
smoothing and the 11x11 search included), and the plain per-pixel loop of the tests on a few
slices, extrapolated to the volume. Target: <= 2 s per volume on 2 CPU cores (Shen et al. needed
about 114 s, 95% of their 2 min per volume).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import best_time, json_line, load_test_module, sync

from brats_lightning.data.layouts import discover_cases
from brats_lightning.data.preprocess import zscore
from brats_lightning.data.readers import load_case
from brats_lightning.data.symmetry import (
    estimate_axis,
    gaussian_smooth,
    straighten,
    symmetry_difference,
    symmetry_maps,
)

ROOT = Path(__file__).resolve().parents[1]
# the plain per-pixel reference lives with the tests
reference_difference = load_test_module("tests/data/symmetry_reference.py").reference_difference


def _load(case_dir: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    root = Path(case_dir) if case_dir else ROOT.parent / "shared" / "data" / "brats2018"
    if root.is_dir():
        cases = discover_cases(root if case_dir is None else root.parent)
        case = next(c for c in cases if case_dir is None or c.case_id == root.name)
        vol = load_case(case)
        name = f"{case.case_id} (real)"
    else:
        from brats_lightning.data.synthetic import write_dataset

        tmp = Path(tempfile.mkdtemp())
        write_dataset(tmp, n_cases=1, shape=(240, 240, 155), spacing=1.0, progress=False)
        vol = load_case(discover_cases(tmp)[0])
        name = "synthetic 240x240x155"
    mask = (vol.image != 0).any(0)
    return name, zscore(vol.image, mask), mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help="a BraTS 2018-layout case folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loop-slices", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name, image, mask = _load(args.case)
    dev = torch.device(args.device)
    x = torch.from_numpy(image).permute(3, 0, 1, 2).contiguous().to(dev)  # (Z, C, X, Y)
    m = torch.from_numpy(mask).permute(2, 0, 1).contiguous().to(dev)

    symmetry_maps(x[:4], m[:4])  # warm-up on a few slices
    t_vec = best_time(lambda: symmetry_maps(x, m), dev, repeats=args.repeats, warmup=0)
    sync(dev)
    t0 = time.perf_counter()
    axis = estimate_axis(x[:, 1], m)
    sync(dev)
    t_axis = time.perf_counter() - t0

    # The per-pixel loop on the slices through the middle of the brain.
    zs = torch.nonzero(m.flatten(1).any(1)).flatten()
    mid = int(zs[len(zs) // 2])
    sl = slice(mid, mid + args.loop_slices)
    xt, mt = straighten(gaussian_smooth(x[sl].cpu().float()), m[sl].cpu(), axis)
    t0 = time.perf_counter()
    ref = reference_difference(xt.numpy(), mt.numpy(), axis.mirror_index())
    t_loop = (time.perf_counter() - t0) / args.loop_slices
    vec = symmetry_difference(xt, mt, axis).numpy()
    agree = np.abs(vec - ref).max()
    n_slices = x.shape[0]

    print(
        f"\nSymmetry maps, {name}, {tuple(image.shape)} (C, X, Y, Z), device {dev}, {torch.get_num_threads()} threads"
    )
    print(f"axis: angle {axis.angle:.1f} deg, row {axis.center_h} (estimated in {t_axis:.2f} s)")
    print(f"{'method':<40} {'per slice':>12} {'per volume':>12}")
    print(f"{'vectorised torch (this package)':<40} {t_vec / n_slices * 1e3:>10.1f}ms {t_vec:>11.2f}s")
    print(f"{'per-pixel loop (tests reference)':<40} {t_loop * 1e3:>10.0f}ms {t_loop * n_slices:>10.0f}s*")
    print(f"{'Shen et al. 2017 (95% of 2 min)':<40} {'':>12} {114:>11.0f}s")
    print(
        f"speed-up vs loop: {t_loop * n_slices / t_vec:.0f}x; max |difference| vs loop on "
        f"{args.loop_slices} slices: {agree:.2e}   (* extrapolated from {args.loop_slices} slices)"
    )
    figures = {"volume_s": t_vec, "axis_s": t_axis, "loop_volume_s": t_loop * n_slices}
    print(json_line(figures | {"speedup_vs_loop": t_loop * n_slices / t_vec, "max_abs_diff": f"{agree:.1e}"}))


if __name__ == "__main__":
    main()
