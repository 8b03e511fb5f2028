"""brats_lightning.data.splits: folds stratified by site, leave-one-site-out."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from brats_lightning.data.groups import case_groups
from brats_lightning.data.splits import fold_cases, load_or_create_splits, make_splits
from brats_lightning.errors import DataError
from tests.helpers import BRATS18


def _legacy_split(ids: list[str], seed: int, test_fraction: float, k: int) -> tuple[list, list]:
    """The split before sites were known (a seeded shuffle dealt in turn): the reference for one group."""
    ordered = sorted(set(ids))
    random.Random(seed).shuffle(ordered)
    n = int(round(test_fraction * len(ordered)))
    return sorted(ordered[:n]), [sorted(ordered[n:][i::k]) for i in range(k)]


def test_folds_hold_every_site_in_proportion_and_one_group_splits_as_before() -> None:
    groups = case_groups(BRATS18)
    for seed in range(20):
        split = make_splits(BRATS18, seed, 0.0, 5, groups)
        assert sorted(c for f in split["folds"] for c in f) == sorted(BRATS18)
        assert sorted(len(f) for f in split["folds"]) == [2, 3, 3, 3, 3]
        for fold in split["folds"]:  # no site twice in a fold: every site has at most 3 cases for 5 folds
            sites = [groups[c] for c in fold]
            assert len(sites) == len(set(sites)), (seed, fold)
    # the BRATS 2013 cases no longer fall into one fold by chance (issue 21: fold 0 was all three)
    assert all(len({groups[c] for c in f}) == len(f) for f in make_splits(BRATS18, 0, 0.0, 5, groups)["folds"])
    synthetic = [f"Synth_{i:04d}" for i in range(24)]
    for seed in range(5):
        for fraction in (0.0, 0.2, 0.4):
            new = make_splits(synthetic, seed, fraction, 5, case_groups(synthetic))
            assert (new["test"], new["folds"]) == _legacy_split(synthetic, seed, fraction, 5)


def test_leave_one_site_out_makes_one_fold_per_site() -> None:
    groups = case_groups(BRATS18)
    split = make_splits(BRATS18, 0, 0.0, 5, groups, "site")
    assert split["num_folds"] == 6
    assert sorted({groups[c] for c in f}.pop() for f in split["folds"]) == sorted(set(groups.values()))
    assert all(len({groups[c] for c in f}) == 1 for f in split["folds"])
    with pytest.raises(DataError, match="data.split=site needs cases of at least two sites"):
        make_splits([f"Synth_{i}" for i in range(6)], 0, 0.0, 5, None, "site")


@pytest.mark.parametrize(
    "split, message",
    [
        ({"test": ["a"], "folds": [["b", "c"], ["d", "b"]]}, "case 'b' is in fold 0 and in fold 1"),
        ({"test": ["a", "c"], "folds": [["b", "c"], ["d"]]}, "case 'c' is in test and in fold 0"),
        ({"test": ["a"], "folds": [["b", "b"], ["d"]]}, "case 'b' is in fold 0 and in fold 0"),
    ],
)
def test_a_split_file_whose_folds_overlap_is_refused_when_read(tmp_path: Path, split: dict, message: str) -> None:
    """A hand-made (or damaged) split file that puts a case in two places would let a fold model score a case it
    trained on: it is refused, naming the file and the case."""
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    with pytest.raises(DataError, match=rf"^{path}: .*{message}: folds and test must be disjoint"):
        load_or_create_splits(path, ["a", "b", "c", "d"])


def test_fold_minus_one_trains_on_every_fold_and_validates_on_none() -> None:
    splits = {"test": ["t1"], "folds": [["a", "b"], ["c"], ["d", "e"]]}
    assert fold_cases(splits, 1) == (["a", "b", "d", "e"], ["c"], ["t1"])
    assert fold_cases(splits, -1) == (["a", "b", "c", "d", "e"], [], ["t1"])
    for bad in (-2, 3):
        with pytest.raises(ValueError, match=r"fold must be in -1\.\.2"):
            fold_cases(splits, bad)
