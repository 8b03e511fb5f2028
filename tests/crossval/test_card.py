"""The model card's words for the preparation: what the run's ``data.preprocess`` did, not a fixed sentence."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from brats_lightning.crossval.card import cleanup_words, preparation_words


@pytest.mark.parametrize(
    ("preprocess", "said", "not_said"),
    [
        ({"histogram": True}, ["1-99 percentiles", "histogram"], ["z-scores", "N4"]),
        ({}, ["1-99 percentiles", "z-scores"], ["histogram", "N4"]),
        ({"n4": ["t1", "t1c"], "clip_percentiles": [0.5, 99.5]}, ["0.5-99.5", "t1, t1c (N4)", "z-scores"], []),
        ({"clip_percentiles": None, "zscore": False}, ["leaves the intensities as they are"], ["clips", "z-scores"]),
    ],
)
def test_the_card_names_the_preparation_the_run_used(preprocess: dict, said: list, not_said: list) -> None:
    words = preparation_words(OmegaConf.create(preprocess))
    assert all(s in words for s in said) and not any(s in words for s in not_said), words


def test_an_unknown_preparation_option_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown_step"):
        preparation_words({"unknown_step": True})


_NONE = {"min_volume_mm3": 0.0, "min_slices": 0, "largest_only": False, "keep_within_mm": 0.0, "et_min_volume_mm3": 0.0}


@pytest.mark.parametrize(
    ("cleanup", "words"),
    [
        (None, "none"),
        ({**_NONE, "tc": None, "et": None}, "none"),
        (  # the 90-minute run's choice (docs/real-fast.md), as cv/cleanup.json stores it
            {
                **_NONE,
                "largest_only": True,
                "tc": {"min_volume_mm3": 1000.0, "largest_only": False, "keep_within_mm": 0.0},
                "et": {"min_volume_mm3": 0.0, "largest_only": True, "keep_within_mm": 0.0},
            },
            "whole tumour: the largest component only; core: the components of at least 1000 mm3 (the others "
            "become edema); enhancing tumour: the largest component only (the others become necrosis)",
        ),
        (
            {**_NONE, "min_volume_mm3": 250.0, "min_slices": 3, "largest_only": True, "keep_within_mm": 20.0},
            "whole tumour: the largest of the components of at least 250 mm3 and spanning at least 3 axial slices "
            "and those within 20 mm of it",
        ),
        (
            {**_NONE, "min_volume_mm3": 500.0, "min_slices": 1, "et_min_volume_mm3": 100.0, "et_threshold": 0.3},
            "enhancing tumour wherever its probability reaches 0.3; whole tumour: the components of at least 500 mm3 "
            "and spanning at least 1 axial slice; "
            "an enhancing tumour below 100 mm3 becomes necrosis",
        ),
    ],
)
def test_a_clean_up_in_words(cleanup: dict | None, words: str) -> None:
    assert cleanup_words(cleanup) == words
