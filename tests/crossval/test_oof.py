"""brats_lightning.crossval.oof: out-of-fold inference."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("context", [0, 1, 2])
def test_a_missing_sequence_zeroes_its_image_and_map_in_the_prepared_case(context: int) -> None:
    """The out-of-fold pass with a sequence missing zeroes channels of the prepared case (images, then
    maps; 2.5D neighbours are stacked later), whatever the context: never an index past its channels."""
    from brats_lightning.crossval.oof import case_channels

    modalities = ["flair", "t1", "t1c", "t2"]
    cfg = {"modalities": modalities, "symmetry": {"enabled": True}, "context_slices": context}
    channels = case_channels(cfg)
    assert channels == {m: [i, i + 4] for i, m in enumerate(modalities)}
    assert case_channels({**cfg, "symmetry": {"enabled": False}}) == {m: [i] for i, m in enumerate(modalities)}
