"""Inference over several trained models and test-time flips: the mean of their class probabilities.

An :class:`EnsembleModule` is a :class:`~brats_lightning.modules.segmentation.SegmentationModule`
for inference only (validation, test, ``predict``): every slice batch goes through each member,
and, with test-time augmentation, through each member again on the left-right mirrored slices
(optionally the other in-plane flip too); the probabilities are averaged. The members must agree on
what they were trained on (:func:`brats_lightning.load.predictor.check_compatible`), so that the
preprocessing and the symmetry maps are computed once per case for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brats_lightning.errors import CheckpointError
from brats_lightning.inference.flips import flip_average
from brats_lightning.modules.segmentation import SegmentationModule

__all__ = ["EnsembleModule"]


class EnsembleModule(SegmentationModule, register=False):
    """The mean class probabilities of ``members``, each on the slices and on their ``flips``.

    Args:
        members: trained models with the same label convention (and data:
            :func:`~brats_lightning.load.predictor.check_compatible`).
        flips: test-time flips besides the identity (:data:`FLIPS`); ``()`` for none.

    Whole-slice inference stays exact: a member sees whole slices (flipped or not) and pads them as it
    always does, so an ensemble of one model without flips predicts exactly as the model.
    """

    def __init__(self, members: Sequence[SegmentationModule], flips: Sequence[tuple[int, ...]] = ()) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0]
        for m in members[1:]:
            if m.convention.name != first.convention.name:
                raise CheckpointError(f"cannot ensemble a {m.convention.name} model with a {first.convention.name} one")
            if m.decision != first.decision:
                raise CheckpointError(
                    f"cannot ensemble a model decided by {m.decision} with one decided by {first.decision} "
                    "(region-based and softmax models)"
                )
        names = sorted({m.display_name for m in members})
        name = names[0] if len(names) == 1 else " + ".join(names)
        if len(members) > 1:
            name = f"{name} (ensemble of {len(members)})"
        super().__init__(
            convention=first.convention.name,
            inference_batch_size=first.inference_batch_size,
            test_hd95=first.test_hd95,
            channels_last=False,
            lesion_metrics=first.lesion_metrics,
            postprocess=first.postprocess,
            name=name + (" + TTA" if flips else ""),
        )
        self.members = nn.ModuleList(members)
        self.flips = tuple(tuple(f) for f in flips)
        self.decision = first.decision
        self.et_threshold = first.et_threshold

    def _members(self) -> list[SegmentationModule]:
        return [m for m in self.members if isinstance(m, SegmentationModule)]

    def prepare_for_inference(self) -> EnsembleModule:
        for m in self._members():
            m.prepare_for_inference()
        return self.eval()

    def predict_slices(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for m in self._members():
            p = flip_average(m.predict_slices, self.flips)(x)
            total = p if total is None else total + p
        assert total is not None
        return total / len(self.members)
