"""Command line: ``python -m brats_lightning.data.synthetic OUT_DIR [--n-cases N] [--montage m.png]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brats_lightning.data.synthetic import read_cases, write_dataset
from brats_lightning.data.synthetic.phantom import DEFAULT_SHAPE, DEFAULT_SPACING

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a synthetic data set (and optionally a montage)."""
    parser = argparse.ArgumentParser(
        prog="python -m brats_lightning.data.synthetic",
        description="Write synthetic BraTS-like cases (FLAIR, T1, T1c, T2, seg) as NIfTI files.",
    )
    parser.add_argument("out_dir", type=Path, help="output folder (case folders are created inside)")
    parser.add_argument("--n-cases", type=int, default=24, help="number of cases (default 24)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=list(DEFAULT_SHAPE),
        metavar=("X", "Y", "Z"),
        help="volume shape (default 80 96 64)",
    )
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING, help="voxel size in mm (default 2.5)")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    parser.add_argument("--montage", type=Path, default=None, help="also save a PNG montage of the first 4 cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    x, y, z = args.shape
    folders = write_dataset(
        args.out_dir, args.n_cases, (x, y, z), args.spacing, args.seed, progress=not args.no_progress
    )
    print(f"{len(folders)} cases in {args.out_dir}")
    if args.montage is not None:
        from brats_lightning.viz import save_montage  # matplotlib only when asked for

        print(f"montage: {save_montage(read_cases(args.out_dir, 4), args.montage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
