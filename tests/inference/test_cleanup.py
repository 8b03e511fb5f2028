"""brats_lightning.inference.cleanup: the clean-up applied, and chosen (on validation cases, out of fold)."""

from __future__ import annotations

import numpy as np
import pytest

from brats_lightning.data.labels import get_convention
from brats_lightning.inference.cleanup import (
    apply_cleanup,
    candidates,
    choose_cleanup,
    choose_nested,
    choose_within_tolerance,
    enhancing_to_necrosis,
    et_rule_candidates,
    is_noop,
    region_components,
    region_rule_candidates,
    remove_small_components,
)

#: the clean-up that changes nothing, written out (not imported: the test checks what the module declares)
NONE = {
    "min_volume_mm3": 0.0,
    "min_slices": 0,
    "largest_only": False,
    "keep_within_mm": 0.0,
    "tc": None,
    "et": None,
    "et_min_volume_mm3": 0.0,
}


def test_removes_small_and_flat_blobs_keeps_the_tumour() -> None:
    seg = np.zeros((40, 40, 30), np.uint8)
    seg[10:20, 10:20, 5:15] = 2  # the tumour: 1000 voxels over 10 slices
    seg[12:16, 12:16, 8:12] = 3
    seg[30:33, 30:33, 20:23] = 1  # small: 27 voxels
    seg[0:15, 25:40, 28] = 2  # flat: 225 voxels on a single slice (a bright corner near the skull)
    out = remove_small_components(seg, spacing=(1, 1, 1), min_volume_mm3=100, min_slices=3)
    np.testing.assert_array_equal(out[10:20, 10:20, 5:15], seg[10:20, 10:20, 5:15])
    assert out[30:33, 30:33, 20:23].sum() == 0 and out[:, :, 28].sum() == 0
    assert seg[30, 30, 20] == 1  # the input is untouched


def test_volume_threshold_is_in_mm3() -> None:
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[5:10, 5:10, 5:10] = 1  # 125 voxels
    assert remove_small_components(seg, (1, 1, 1), min_volume_mm3=200, min_slices=1).sum() == 0
    assert remove_small_components(seg, (2, 2, 2), min_volume_mm3=200, min_slices=1).sum() == 125  # 1000 mm3
    assert remove_small_components(np.zeros((4, 4, 4), np.uint8)).sum() == 0


def test_a_clean_up_is_chosen_only_when_it_beats_none_by_more_than_the_folds_spread() -> None:
    folds = np.repeat(np.arange(5), 4)
    base = np.linspace(0.5, 0.9, 20)
    steady = base + 0.02  # +0.02 on every case: consistent
    erratic = base + np.where(folds == 0, 0.40, -0.05)  # a larger mean gain, all from one fold
    scores = np.stack([base, erratic, steady], axis=1)
    chosen, figures = choose_cleanup(scores, folds, np.ones(20, bool))
    assert chosen == 2 and figures["gain"][1] > figures["gain"][2]
    assert figures["ci95_low"][1] < 0 < figures["ci95_high"][1]  # the erratic one's gain is inside its interval
    assert figures["ci95_low"][2] > 0  # the steady one's is not
    # the choice for fold 0's cases is made without them: the erratic candidate's gain is then negative
    assert choose_cleanup(scores, folds, folds != 0)[0] == 2
    # nothing gains: no clean-up
    assert choose_cleanup(np.stack([base, base - 0.01], axis=1), folds, np.ones(20, bool))[0] == 0


def test_the_candidates_start_with_no_clean_up_and_the_et_rule_is_the_brats_rule() -> None:
    comps = candidates([500, 100], largest_only=True)
    assert comps[0] == NONE
    assert [c["min_volume_mm3"] for c in comps[1:3]] == [100.0, 500.0] and comps[-1]["largest_only"]
    rules = et_rule_candidates(comps[1], [200])
    assert [r["et_min_volume_mm3"] for r in rules] == [0.0, 200.0] and rules[1]["min_volume_mm3"] == 100.0
    conv = get_convention("brats2017")  # internal: 0 background, 1 NCR, 2 edema, 3 enhancing
    classes = np.zeros((20, 20, 20), np.uint8)
    classes[2:10, 2:10, 2:10] = 2
    classes[4:6, 4:6, 4:6] = 3  # 8 voxels of enhancing tumour at 2 mm: 64 mm3
    spacing = (2.0, 2.0, 2.0)
    relabelled = enhancing_to_necrosis(classes, conv, spacing, 100.0)
    assert (relabelled == 3).sum() == 0 and (relabelled == 1).sum() == 8 and (classes == 3).sum() == 8
    assert enhancing_to_necrosis(classes, conv, spacing, 50.0) is classes  # 64 mm3 >= 50: kept
    classes[15, 15, 15] = 2  # a lone edema voxel
    cleaned = apply_cleanup(classes, spacing, conv, {**comps[1], "et_min_volume_mm3": 100.0})
    assert cleaned[15, 15, 15] == 0 and (cleaned == 1).sum() == 8
    assert apply_cleanup(classes, spacing, conv, comps[0]) is classes  # the first candidate changes nothing


def test_largest_only_keeps_the_largest_component() -> None:
    seg = np.zeros((30, 30, 30), np.uint8)
    seg[2:12, 2:12, 2:12] = 2
    seg[20:25, 20:25, 20:25] = 1
    out = remove_small_components(seg, min_volume_mm3=0, min_slices=1, largest_only=True)
    assert out[20:25, 20:25, 20:25].sum() == 0 and (out == seg)[:15, :15, :15].all()


def test_the_strongest_clean_up_within_the_tolerance_is_chosen() -> None:
    assert choose_within_tolerance([0.80, 0.85, 0.849, 0.70], tolerance=0.002) == 2
    assert choose_within_tolerance([0.80, 0.85, 0.847, 0.70], tolerance=0.002) == 1
    none = NONE
    assert candidates([500, 100], largest_only=True) == [
        none,
        {**none, "min_volume_mm3": 100.0, "min_slices": 1},
        {**none, "min_volume_mm3": 500.0, "min_slices": 1},
        {**none, "largest_only": True},
    ]
    assert is_noop(None) and is_noop(none) and not is_noop({"largest_only": True})


def test_the_nested_choice_is_made_without_the_fold_and_can_differ_from_the_choice_on_all_cases() -> None:
    """Candidate 1 gains +0.02 on folds 0-3 and -0.005 on fold 4: on all five folds its interval is above zero
    (chosen); without fold 0 (four folds, one of them negative) it is not, so fold 0's cases get no clean-up;
    without fold 4 every fold gains, so fold 4's cases get it."""
    folds = np.repeat(np.arange(5), 3)
    base = np.tile([0.6, 0.7, 0.8], 5)
    gain = np.repeat([0.02, 0.02, 0.02, 0.02, -0.005], 3)
    scores = np.stack([base, base + gain], axis=1)
    final, nested, figures = choose_nested(scores, folds)
    assert final == 1 and figures["ci95_low"][1] > 0
    assert nested[0] == 0 and nested[4] == 1 and nested != {k: final for k in range(5)}
    # the choice for fold 0 is choose_cleanup's on the other folds' cases
    assert nested[0] == choose_cleanup(scores, folds, folds != 0)[0]


def test_fewer_than_three_folds_choose_no_clean_up_and_say_so() -> None:
    """With two folds a nested choice sees one fold: no spread, no interval; it refuses instead of taking any gain."""
    folds = np.repeat([0, 1], 4)
    base = np.linspace(0.5, 0.8, 8)
    scores = np.stack([base, base + 0.1], axis=1)  # a large, consistent gain
    chosen, figures = choose_cleanup(scores, folds, folds != 0)
    assert chosen == 0 and figures["folds"] == 1 and "fewer than 3" in figures["refused"]
    final, nested, _ = choose_nested(scores, folds)
    assert final == 0 and nested == {0: 0, 1: 0}


def test_satellites_within_the_distance_of_the_largest_component_are_kept() -> None:
    classes = np.zeros((60, 40, 30), np.uint8)
    classes[5:20, 5:20, 5:20] = 2  # the main tumour
    classes[24:27, 10:13, 10:13] = 3  # a satellite 4 voxels away along x
    classes[50:53, 10:13, 10:13] = 1  # one 30 voxels away
    spacing = (2.0, 1.0, 1.0)  # mm: the satellites are 8 and 60 mm away

    def nearest_mm(component: np.ndarray) -> float:  # brute force, another way than the distance transform
        a = np.argwhere(classes == 2) * np.array(spacing)
        b = np.argwhere(component) * np.array(spacing)
        return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())

    assert nearest_mm(classes == 3) == pytest.approx(10.0) and nearest_mm(classes == 1) == pytest.approx(62.0)
    options = {"min_volume_mm3": 0.0, "min_slices": 0, "largest_only": True}
    for within, kept in ((0.0, set()), (9.9, set()), (10.0, {3}), (61.9, {3}), (62.0, {1, 3})):
        out = remove_small_components(classes, spacing, **options, keep_within_mm=within)
        assert set(np.unique(out[out > 0]).tolist()) - {2} == kept, within
        assert (out[classes == 2] == 2).all()
    # the stored option is validated like the others
    assert (
        apply_cleanup(classes, spacing, get_convention("brats2017"), {**options, "keep_within_mm": 10.0})[25, 11, 11]
        == 3
    )


def test_a_region_s_removed_components_go_one_level_down() -> None:
    conv = get_convention("brats2017")
    edema, necrosis, et = 2, 1, 3  # internal classes of brats2017 (labels 2, 1, 4)
    classes = np.zeros((50, 30, 30), np.uint8)
    classes[5:25, 5:25, 5:25] = edema
    classes[8:18, 8:18, 8:18] = et  # the main enhancing tumour
    classes[20:22, 8:10, 8:10] = et  # an enhancing satellite 2 voxels away (8 voxels)
    classes[40:44, 10:14, 10:14] = necrosis  # a separate core lesion (64 voxels), far away
    spacing = (1.0, 1.0, 1.0)
    # enhancing components under 10 mm3 become necrosis: the satellite, inside the core, the tumour unchanged
    out = region_components(classes, conv, "et", {"min_volume_mm3": 10.0}, spacing)
    assert (out[20:22, 8:10, 8:10] == necrosis).all() and (out[8:18, 8:18, 8:18] == et).all()
    assert (conv.region_masks(out)["wt"] == conv.region_masks(classes)["wt"]).all()
    # the largest core component with what lies within 5 mm: the far core lesion becomes edema, the satellite stays
    out = region_components(classes, conv, "tc", {"largest_only": True, "keep_within_mm": 5.0}, spacing)
    assert (out[40:44, 10:14, 10:14] == edema).all() and (out[20:22, 8:10, 8:10] == et).all()
    # through apply_cleanup, the whole-tumour step first, then the regions' rules, then the ET volume rule
    options = {"min_volume_mm3": 0.0, "min_slices": 0, "et": {"min_volume_mm3": 10.0, "largest_only": False}}
    np.testing.assert_array_equal(
        apply_cleanup(classes, spacing, conv, options),
        region_components(classes, conv, "et", {"min_volume_mm3": 10.0}, spacing),
    )
    rules = region_rule_candidates({"min_volume_mm3": 0.0}, "et", [50, 10], [20])
    assert [r["et"] for r in rules][0] is None and rules[1]["et"]["min_volume_mm3"] == 10.0
    assert rules[-1]["et"] == {"min_volume_mm3": 0.0, "largest_only": True, "keep_within_mm": 0.0}
    assert not is_noop(rules[1]) and all(r["min_volume_mm3"] == 0.0 for r in rules)
