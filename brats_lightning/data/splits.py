"""Seeded train/validation/test splits and cross-validation folds, written once and re-read.

A split file holds the held-out test cases and ``num_folds`` folds of the remaining cases. Fold
``k`` validates on ``folds[k]`` and trains on the others (Shen et al. Sec. 3.2: 5-fold CV on the
training cases). Folds are stratified by site (:mod:`brats_lightning.data.groups`): each holds every
site in proportion, or, with ``strategy="site"``, each is one site (leave-one-site-out). The file
is created on first use and re-read afterwards, so every run, fold and model sees the same cases.
A split folder of the cache also holds a readable ``config.json`` of what determines the split
(:func:`split_config`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from brats_lightning.data.provenance import write_config
from brats_lightning.errors import DataError
from brats_lightning.files import write_text_atomic
from brats_lightning.schema import read_json, validate

__all__ = [
    "CaseId",
    "SPLIT_FILE",
    "STRATEGIES",
    "SplitFile",
    "make_splits",
    "split_config",
    "load_or_create_splits",
    "fold_cases",
]

CaseId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/\\]+$")]


class SplitFile(BaseModel):
    """A split file (:mod:`brats_lightning.data.splits`): held-out test cases and cross-validation folds."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    test: list[CaseId]
    folds: Annotated[list[list[CaseId]], Field(min_length=2, max_length=100)]

    @model_validator(mode="after")
    def _disjoint(self) -> SplitFile:
        """Every case in one place: a case in two folds, or in a fold and the test, would be scored by a model
        that trained on it."""
        seen: dict[str, str] = {}
        for where, members in [("test", self.test), *((f"fold {k}", f) for k, f in enumerate(self.folds))]:
            for case in members:
                if case in seen:
                    raise ValueError(
                        f"case {case!r} is in {seen[case]} and in {where}: folds and test must be disjoint"
                    )
                seen[case] = where
        return self


SPLIT_FILE = "split.json"
"""Name of the split file in a split folder of the cache."""


#: how folds are made: ``stratified`` (every fold holds every site in proportion), ``site`` (one fold per site)
STRATEGIES: tuple[str, ...] = ("stratified", "site")


def make_splits(
    case_ids: Sequence[str],
    seed: int = 0,
    test_fraction: float = 0.2,
    num_folds: int = 5,
    groups: Mapping[str, str] | None = None,
    strategy: str = "stratified",
) -> dict:
    """Split case ids into test cases and ``num_folds`` folds (seeded, order-independent).

    ``stratified``: the cases of every group (site) are shuffled; the test cases are the first
    ``test_fraction`` of an ordering that spreads every group evenly (a case's key is its fractional
    rank in its group); the remaining cases are dealt to the folds in turn, one group after the
    other (largest first) with the turn carried over, so every fold holds every site in proportion
    and no two cases of a site share a fold before every fold has one. With one group this is a
    plain seeded shuffle dealt in turn. ``site``: one fold per site (leave-one-site-out;
    ``num_folds`` is the number of sites; the test cases are still drawn stratified).

    Raises:
        DataError: too few cases for the requested folds, or a single site with ``strategy="site"``.
    """
    ids = sorted(set(case_ids))
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    group_of = {c: (groups or {}).get(c, "all") for c in ids}
    rng = random.Random(seed)
    keys: dict[str, float] = {}
    for g in sorted(set(group_of.values())):
        members = [c for c in ids if group_of[c] == g]
        rng.shuffle(members)
        keys.update({c: (i + 0.5) / len(members) for i, c in enumerate(members)})
    order = sorted(ids, key=lambda c: (keys[c], group_of[c]))
    n_test = int(round(test_fraction * len(ids)))
    test, rest = sorted(order[:n_test]), order[n_test:]
    if strategy == "site":
        sites = sorted({group_of[c] for c in rest})
        if len(sites) < 2:
            raise DataError(
                f"data.split=site needs cases of at least two sites; all {len(rest)} are in {sites} "
                "(set data.groups to say how a case's site is read from its id)"
            )
        folds = [sorted(c for c in rest if group_of[c] == s) for s in sites]
    else:
        if len(rest) < num_folds:
            raise DataError(
                f"{len(ids)} cases leave {len(rest)} for training and validation, fewer than num_folds={num_folds}"
            )
        sizes = {g: sum(group_of[c] == g for c in rest) for g in set(group_of.values())}
        dealt = sorted(rest, key=lambda c: (-sizes[group_of[c]], group_of[c], keys[c]))
        folds = [sorted(dealt[i::num_folds]) for i in range(num_folds)]
    return {
        "seed": seed,
        "test_fraction": test_fraction,
        "num_folds": len(folds),
        "strategy": strategy,
        "test": test,
        "folds": folds,
        "groups": {c: group_of[c] for c in ids},
    }


def split_config(
    case_ids: Sequence[str],
    seed: int,
    test_fraction: float,
    num_folds: int,
    groups: Mapping[str, str] | None = None,
    strategy: str = "stratified",
) -> dict[str, Any]:
    """What determines a split (:func:`make_splits`): the number of cases (listed in the split), seed,
    fractions, folds, strategy and the number of cases of every group."""
    counts: dict[str, int] = {}
    for c in set(case_ids):
        g = (groups or {}).get(c, "all")
        counts[g] = counts.get(g, 0) + 1
    return {
        "n_cases": len(set(case_ids)),
        "seed": seed,
        "test_fraction": test_fraction,
        "num_folds": num_folds,
        "strategy": strategy,
        "groups": dict(sorted(counts.items())),
    }


def load_or_create_splits(
    path: str | Path,
    case_ids: Sequence[str],
    seed: int = 0,
    test_fraction: float = 0.2,
    num_folds: int = 5,
    config: dict[str, Any] | None = None,
    groups: Mapping[str, str] | None = None,
    strategy: str = "stratified",
) -> dict:
    """Read the split file at ``path``, creating it (atomically) if it does not exist.

    Args:
        path: the split file.
        case_ids: the data set's cases.
        seed: see :func:`make_splits`.
        test_fraction: see :func:`make_splits`.
        num_folds: see :func:`make_splits`.
        groups: see :func:`make_splits`.
        strategy: see :func:`make_splits`.
        config: when given, written (once) as ``config.json`` beside the split file: what produced
            it (e.g. :func:`split_config` and the data set); for a folder of its own.

    Raises:
        DataError: an existing file names cases that are not in ``case_ids``.
    """
    path = Path(path)
    if config is not None:  # before the split: a split file always has its config beside it
        write_config(path.parent, "train/validation/test split (brats_lightning.data.splits)", config)
    if path.is_file():
        splits = read_json(path, "split file", DataError)
        validate(SplitFile, splits, path, DataError)
        listed = set(splits["test"]).union(*map(set, splits["folds"]))
        missing = sorted(listed - set(case_ids))
        if missing:
            raise DataError(f"{path}: the split names cases that are not in the data: {missing[:5]}")
        return splits
    splits = make_splits(case_ids, seed, test_fraction, num_folds, groups, strategy)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(splits, indent=1))
    return splits


def fold_cases(splits: dict, fold: int) -> tuple[list[str], list[str], list[str]]:
    """``(train, val, test)`` case ids of ``fold`` (``-1``: every fold's cases train, none validates)."""
    folds = splits["folds"]
    if not -1 <= fold < len(folds):
        raise ValueError(f"fold must be in -1..{len(folds) - 1}, got {fold}")
    train = sorted(c for i, f in enumerate(folds) if i != fold for c in f)
    return train, list(folds[fold]) if fold >= 0 else [], list(splits["test"])
