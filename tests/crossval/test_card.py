"""The model card's words for the preparation: what the run's ``data.preprocess`` did, not a fixed sentence."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from brats_lightning.crossval.card import preparation_words


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
