"""brats_lightning.crossval.scoring: the uncertainty figures of a cross-validation against a hand-computed
reference, and their intervals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brats_lightning.crossval.scoring import choose_stages, cleanup_table, uncertainty_figures
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


def test_the_clean_up_is_chosen_stage_by_stage_each_on_its_regions_and_nested_per_fold() -> None:
    """Two stages: a component rule that helps in every fold but fold 0's cases, then a region rule that helps only
    after the component rule was taken (each stage scored on the choice before it)."""
    folds = np.repeat(np.arange(4), 5)  # 20 cases, 4 folds
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.002, (20, 2))
    calls: list[tuple[str, str]] = []

    def components(base: dict) -> list[dict]:
        return [{**base, "c": 0}, {**base, "c": 1}]

    def region(base: dict) -> list[dict]:
        return [{**base, "r": 0}, {**base, "r": 1}]

    def figures_of(options: list[dict], regions: tuple[str, ...]) -> np.ndarray:
        calls.append((json_key(options[0]), regions[0]))
        out = np.zeros((20, len(options), 2 * len(regions)))
        for i, o in enumerate(options):
            gain = 0.0
            if "r" not in o:  # the components' stage: +0.05 everywhere except on fold 0's cases (-0.2)
                gain = 0.05 * o["c"] * np.where(folds == 0, -4.0, 1.0)
            elif o["r"]:  # the region rule: +0.03, but only on top of the component rule
                gain = 0.03 if o.get("c") else -0.03
            out[:, i, :] = (0.5 + gain + noise[:, i % 2])[:, None]
        return out

    stages = [("components", components, ("wt", "tc", "et")), ("et", region, ("et",))]
    final, nested, tuning = choose_stages(stages, figures_of, folds, 4)

    def pick(o: dict) -> dict:
        return {"c": o["c"], "r": o["r"]}

    # on all the folds the component rule's gain (mean 0.05 - 0.25 over 4 folds) is not above zero: none
    assert pick(final) == {"c": 0, "r": 0}
    # fold 0 chose without its cases: the component rule helps on the other three, then the region rule too
    assert pick(nested[0]) == {"c": 1, "r": 1}
    assert all(pick(nested[k]) == {"c": 0, "r": 0} for k in (1, 2, 3))
    # each path's candidates scored once: components once, the region stage on the two paths taken
    assert len(calls) == 3 and sorted(r for _, r in calls) == ["et", "et", "wt"]
    assert tuning["nested"]["0"] == nested[0] and tuning["folds"] == 4
    table = tuning["et"]
    assert set(table[1]) >= {"gain", "ci95_low", "dice_et", "lesion_dice_et"} and "dice_wt" not in table[1]
    lines = cleanup_table(table, "et").splitlines()
    assert len(lines) == 4 and lines[0].startswith("| clean-up | Dice ET | lesion Dice ET | gain")


def json_key(o: dict) -> str:
    import json

    return json.dumps(o, sort_keys=True)
