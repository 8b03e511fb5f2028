"""Label conventions: lossless mappings, regions, and unknown values as errors."""

from __future__ import annotations

import numpy as np
import pytest

from brats_lightning.data.labels import (
    CONVENTIONS,
    AmbiguousConventionError,
    UnknownLabelError,
    detect_convention,
    get_convention,
)


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_round_trip_is_lossless(name: str) -> None:
    conv = CONVENTIONS[name]
    rng = np.random.default_rng(0)
    labels = rng.choice(conv.labels, size=(7, 8, 9))
    internal = conv.to_internal(labels)
    assert internal.dtype == np.uint8 and internal.max() < conv.num_classes
    np.testing.assert_array_equal(conv.from_internal(internal), labels)


@pytest.mark.parametrize(
    ("name", "wt", "tc", "et"),
    [
        ("brats2013", {1, 2, 3, 4}, {1, 3, 4}, {4}),
        ("brats2017", {1, 2, 4}, {1, 4}, {4}),
        ("brats2023", {1, 2, 3}, {1, 3}, {3}),
    ],
)
def test_regions_in_file_labels(name: str, wt: set, tc: set, et: set) -> None:
    conv = CONVENTIONS[name]
    labels = np.array(conv.labels)
    masks = conv.region_masks(conv.to_internal(labels))
    assert set(labels[masks["wt"]].tolist()) == wt
    assert set(labels[masks["tc"]].tolist()) == tc
    assert set(labels[masks["et"]].tolist()) == et


def test_unknown_label_is_an_error_naming_file_and_values() -> None:
    with pytest.raises(UnknownLabelError, match=r"seg\.nii\.gz: label values \[3\] are not in the brats2017"):
        get_convention("brats2018").to_internal(np.array([0, 1, 3, 4]), source="seg.nii.gz")
    with pytest.raises(UnknownLabelError, match=r"\[4\] are not in the brats2023"):
        get_convention("brats2023").to_internal(np.array([0, 4]))
    with pytest.raises(UnknownLabelError, match="non-integer"):
        get_convention("brats2017").to_internal(np.array([0.0, 1.5]))


def test_aliases_and_unknown_names() -> None:
    assert get_convention("BraTS-2021").name == "brats2017"
    assert get_convention("brats2015").name == "brats2013"
    with pytest.raises(KeyError, match="unknown label convention"):
        get_convention("kits19")


def test_detect_convention() -> None:
    assert detect_convention([0, 1, 2, 4]).name == "brats2017"
    with pytest.raises(AmbiguousConventionError, match="fit the conventions"):  # 2013 or 2023: never guessed
        detect_convention([0, 1, 2, 3])
    assert detect_convention([0, 1, 2, 3, 4]).name == "brats2013"
    with pytest.raises(UnknownLabelError):
        detect_convention([0, 5])


def test_torch_region_masks() -> None:
    import torch

    conv = get_convention("brats2017")
    t = torch.tensor([0, 1, 2, 3])
    m = conv.region_masks(t)
    assert m["tc"].tolist() == [False, True, False, True]
    assert m["et"].tolist() == [False, False, False, True]


@pytest.mark.parametrize("src", sorted(CONVENTIONS))
@pytest.mark.parametrize("dst", sorted(CONVENTIONS))
def test_convert_preserves_every_region(src: str, dst: str) -> None:
    from brats_lightning.data.labels import convert

    s, d = CONVENTIONS[src], CONVENTIONS[dst]
    classes = np.random.default_rng(1).integers(0, s.num_classes, size=(6, 7, 5))
    out = convert(classes, s, d)
    assert out.max() < d.num_classes
    ms, md = s.region_masks(classes), d.region_masks(out)
    for r in ("wt", "tc", "et"):
        np.testing.assert_array_equal(ms[r], md[r])


def test_convert_2017_2023_is_lossless_and_2013_merges_the_core() -> None:
    from brats_lightning.data.labels import convert

    c = np.arange(4)
    np.testing.assert_array_equal(convert(convert(c, "brats2017", "brats2023"), "brats2023", "brats2017"), c)
    # 2013 necrosis (1) and non-enhancing (3) both become NCR/NET; enhancing 4 -> label 4 (2017) or 3 (2023)
    assert CONVENTIONS["brats2017"].from_internal(convert(np.arange(5), "brats2013", "brats2017")).tolist() == [
        0,
        1,
        2,
        1,
        4,
    ]
    assert CONVENTIONS["brats2023"].from_internal(convert(np.arange(5), "brats2013", "brats2023")).tolist() == [
        0,
        1,
        2,
        1,
        3,
    ]
