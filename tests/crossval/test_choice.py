"""brats_lightning.crossval.choice: the clean-up chosen stage by stage, each stage on the regions it changes, and
nested per fold."""

from __future__ import annotations

import json

import numpy as np

from brats_lightning.crossval.choice import choose_stages, cleanup_table


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
    return json.dumps(o, sort_keys=True)
