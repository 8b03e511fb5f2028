"""Seeded train/validation/test splits and cross-validation folds, written once and re-read.

A split file holds the held-out test cases and ``num_folds`` folds of the remaining cases. Fold
``k`` validates on ``folds[k]`` and trains on the others (Shen et al. Sec. 3.2: 5-fold CV on the
training cases). The file is created on first use and re-read afterwards, so every run, fold and
model sees the same cases. A split folder of the cache also holds a readable ``config.json`` of
what determines the split (:func:`split_config`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brats_lightning.data.io import DataError
from brats_lightning.data.provenance import write_config
from brats_lightning.utils import write_text_atomic

__all__ = ["SPLIT_FILE", "make_splits", "split_config", "load_or_create_splits", "fold_cases"]

SPLIT_FILE = "split.json"
"""Name of the split file in a split folder of the cache."""


def make_splits(case_ids: Sequence[str], seed: int = 0, test_fraction: float = 0.2, num_folds: int = 5) -> dict:
    """Split case ids into test cases and ``num_folds`` folds (seeded, order-independent).

    Raises:
        DataError: too few cases for the requested folds.
    """
    ids = sorted(set(case_ids))
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    rng = random.Random(seed)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    n_test = int(round(test_fraction * len(ids)))
    test, rest = sorted(shuffled[:n_test]), shuffled[n_test:]
    if len(rest) < num_folds:
        raise DataError(
            f"{len(ids)} cases leave {len(rest)} for training and validation, fewer than num_folds={num_folds}"
        )
    folds = [sorted(rest[i::num_folds]) for i in range(num_folds)]
    return {
        "seed": seed,
        "test_fraction": test_fraction,
        "num_folds": num_folds,
        "test": test,
        "folds": folds,
    }


def split_config(case_ids: Sequence[str], seed: int, test_fraction: float, num_folds: int) -> dict[str, Any]:
    """What determines a split (:func:`make_splits`): the number of cases (listed in the split), seed, fractions."""
    return {
        "n_cases": len(set(case_ids)),
        "seed": seed,
        "test_fraction": test_fraction,
        "num_folds": num_folds,
    }


def load_or_create_splits(
    path: str | Path,
    case_ids: Sequence[str],
    seed: int = 0,
    test_fraction: float = 0.2,
    num_folds: int = 5,
    config: dict[str, Any] | None = None,
) -> dict:
    """Read the split file at ``path``, creating it (atomically) if it does not exist.

    Args:
        path: the split file.
        case_ids: the data set's cases.
        seed: see :func:`make_splits`.
        test_fraction: see :func:`make_splits`.
        num_folds: see :func:`make_splits`.
        config: when given, written (once) as ``config.json`` beside the split file: what produced
            it (e.g. :func:`split_config` and the data set); for a folder of its own.

    Raises:
        DataError: an existing file names cases that are not in ``case_ids``.
    """
    path = Path(path)
    if config is not None:  # before the split: a split file always has its config beside it
        write_config(path.parent, "train/validation/test split (brats_lightning.data.splits)", config)
    if path.is_file():
        from brats_lightning.schema import SplitFile, read_json, validate

        splits = read_json(path, "split file", DataError)
        validate(SplitFile, splits, path, DataError)
        listed = set(splits["test"]).union(*map(set, splits["folds"]))
        missing = sorted(listed - set(case_ids))
        if missing:
            raise DataError(f"{path}: the split names cases that are not in the data: {missing[:5]}")
        return splits
    splits = make_splits(case_ids, seed, test_fraction, num_folds)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(splits, indent=1))
    return splits


def fold_cases(splits: dict, fold: int) -> tuple[list[str], list[str], list[str]]:
    """``(train, val, test)`` case ids of ``fold``."""
    folds = splits["folds"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold must be in 0..{len(folds) - 1}, got {fold}")
    train = sorted(c for i, f in enumerate(folds) if i != fold for c in f)
    return train, list(folds[fold]), list(splits["test"])
