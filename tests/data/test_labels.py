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
        ("brats2024", {1, 2, 3}, {1, 3}, {3}),  # the resection cavity (4) is no tumour region
        ("msd", {1, 2, 3}, {2, 3}, {3}),
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


def test_brats2024_scores_its_own_regions_and_is_never_read_off_the_values() -> None:
    conv = get_convention("brats2024")
    labels = np.array([0, 1, 2, 3, 4])
    masks = conv.region_masks(conv.to_internal(labels), conv.scored_regions)
    assert conv.scored_regions == ("wt", "tc", "et", "netc", "snfh", "rc")
    assert {r: labels[m].tolist() for r, m in masks.items()} == {
        "wt": [1, 2, 3], "tc": [1, 3], "et": [3], "netc": [1], "snfh": [2], "rc": [4]
    }  # fmt: skip
    # values alone never say MSD or BraTS 2024 (their values mean other tissues in other conventions)
    assert detect_convention([0, 1, 2, 3, 4]).name == "brats2013"
    with pytest.raises(AmbiguousConventionError, match=r"\['brats2013', 'brats2023'\]"):
        detect_convention([0, 1, 2, 3])
    assert get_convention("brats2024-gli").name == "brats2024" and get_convention("brats2024-men").name == "brats2023"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}, "msd"),  # the Decathlon's names
        ({1: "edema", 2: "non_enhancing_and_necrosis", 3: "enhancing_tumor"}, "msd"),  # nnU-Net-style names
        ({1: "NCR", 2: "edema", 3: "enhancing tumor"}, "brats2023"),
        ({1: "NCR/NET", 2: "peritumoral edema", 4: "GD-enhancing tumor"}, "brats2017"),
        ({1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}, None),  # "ET" names no tissue by itself
        ({1: "NETC", 2: "SNFH", 3: "enhancing tissue", 4: "resection cavity"}, "brats2024"),
    ],
)
def test_a_dataset_json_s_label_names_find_their_convention(labels: dict[int, str], expected: str | None) -> None:
    from brats_lightning.data.labels import convention_of_tissues, tissue_of

    tissues = {v: t for v, n in labels.items() if (t := tissue_of(n)) is not None}
    found = convention_of_tissues(tissues)
    assert (found.name if found else None) == expected
