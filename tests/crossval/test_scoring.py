"""brats_lightning.crossval.scoring: the uncertainty figures of a cross-validation against a hand-computed
reference, and their intervals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brats_lightning.crossval.scoring import uncertainty_figures
from brats_lightning.data.cache import PreparedCase


def _pairs_auroc(scores: list[float], wrong: list[bool]) -> float:
    """AUROC by its definition: the share of (wrong, right) voxel pairs the score ranks right, ties half."""
    pos = [s for s, w in zip(scores, wrong) if w]
    neg = [s for s, w in zip(scores, wrong) if not w]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = r + 1.0
    return ranks


def test_the_uncertainty_figures_against_a_hand_computed_reference(tmp_path: Path) -> None:
    """Three tiny cases (one slice of 2x3 voxels, all brain), their out-of-fold classes, entropy and max
    probability written as the cross-validation writes them: the AUROCs are those of the pairs' definition, the
    Spearman correlation that of the ranks, and every figure comes with its bootstrap interval."""
    cases, dice, truth = {}, {}, {}
    # per case: label, predicted classes, entropy, max probability (2x3 voxels each), the members' agreement
    data = {  # a: one wrong voxel, b: two, c: three
        "a": (
            [0, 1, 1, 0, 2, 2],
            [0, 1, 0, 0, 2, 2],
            [0.1, 0.2, 0.9, 0.05, 0.3, 0.8],
            [0.9, 0.8, 0.3, 0.95, 0.7, 0.4],
            0.9,
        ),
        "b": (
            [0, 0, 3, 3, 0, 1],
            [0, 3, 3, 0, 0, 1],
            [0.0, 0.7, 0.2, 0.6, 0.1, 0.3],
            [1.0, 0.5, 0.9, 0.6, 0.9, 0.5],
            0.6,
        ),
        "c": (
            [2, 2, 2, 0, 0, 0],
            [2, 0, 0, 0, 0, 1],
            [0.2, 0.8, 0.7, 0.1, 0.4, 0.1],
            [0.8, 0.4, 0.5, 0.9, 0.5, 0.9],
            0.3,
        ),
    }
    (tmp_path / "oof").mkdir()
    for case, (label, classes, entropy, top, agreement) in data.items():
        folder = tmp_path / "prepared" / case
        folder.mkdir(parents=True)
        shape = (1, 2, 3)
        np.save(folder / "label.npy", np.array(label, np.uint8).reshape(shape))
        np.save(folder / "mask.npy", np.ones(shape, bool))
        np.savez(
            tmp_path / "oof" / f"{case}.npz",
            classes=np.array(classes, np.uint8).reshape(shape),
            uncertainty=np.array(entropy, np.float16).reshape(shape),
            max_probability=np.array(top, np.float16).reshape(shape),
            agreement=np.array(agreement),
        )
        cases[case] = PreparedCase(case, folder, {})
        truth[case] = [c != g for c, g in zip(classes, label)]
        dice[case] = [float(np.mean([not w for w in truth[case]]))] * 3  # a "real" mean Dice per case
    (tmp_path / "cv").mkdir()
    ids = sorted(data)
    figures = uncertainty_figures(tmp_path, ids, cases, dice, {c: "site" for c in ids}, n_boot=300)
    entropy = [float(np.float16(v)) for c in ids for v in data[c][2]]
    baseline = [1.0 - float(np.float16(v)) for c in ids for v in data[c][3]]
    wrong = [w for c in ids for w in truth[c]]
    assert figures["cv/uncertainty_voxel_auroc"] == pytest.approx(_pairs_auroc(entropy, wrong))
    assert figures["cv/uncertainty_voxel_auroc_max_probability"] == pytest.approx(_pairs_auroc(baseline, wrong))
    assert figures["cv/uncertainty_voxel_auroc_gain_over_max_probability"] == pytest.approx(
        _pairs_auroc(entropy, wrong) - _pairs_auroc(baseline, wrong)
    )
    own = [_pairs_auroc([float(np.float16(v)) for v in data[c][2]], truth[c]) for c in ids]
    assert figures["cv/uncertainty_voxel_auroc_per_case"] == pytest.approx(np.mean(own))
    agreements, real = [data[c][4] for c in ids], [dice[c][0] for c in ids]
    ra, rd = _ranks(agreements), _ranks(real)
    rho = 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rd)) / (3 * (3**2 - 1))  # no ties here
    assert figures["cv/uncertainty_case_spearman"] == pytest.approx(rho)
    for key in ("voxel_auroc", "voxel_auroc_max_probability", "voxel_auroc_per_case", "case_spearman"):
        low, high = figures[f"cv/uncertainty_{key}_ci95_low"], figures[f"cv/uncertainty_{key}_ci95_high"]
        assert low <= figures[f"cv/uncertainty_{key}"] <= high or np.isnan(low), key
    rows = list(csv.DictReader((tmp_path / "cv" / "uncertainty.csv").open()))
    assert [float(r["voxel_auroc"]) for r in rows] == pytest.approx(own)
