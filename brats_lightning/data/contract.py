"""What the models and callbacks may ask of a data module: the contract, as ``Protocol``s.

:class:`~brats_lightning.data.datamodule.BratsDataModule` fulfils both; another data module (a new
data set's own) fulfils :class:`SegmentationData` to train and test the FCN, and :class:`PatchData`
for Havaei et al.'s patch CNNs (two-phase training, cascades). The models and callbacks check the
contract with ``isinstance`` and read nothing else of the data module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

__all__ = ["PatchData", "SegmentationData"]


@runtime_checkable
class SegmentationData(Protocol):
    """A data module of whole-case validation and test batches (``data.datasets.VolumeDataset`` items).

    Attributes:
        mode: ``"slices"`` (training on cropped axial slices) or ``"patches"`` (on patches).
        crop_size: the training crop of slice mode (the FCN checks it suits its pooling).
    """

    mode: str
    crop_size: Sequence[int]

    def describe(self) -> dict:
        """What a model needs to preprocess new scans as in training (stored in its checkpoints)."""
        ...

    def label_frequencies(self) -> list[float]:
        """Class frequencies inside the brain over the training cases (Havaei Sec. 4: output biases)."""
        ...


@runtime_checkable
class PatchData(SegmentationData, Protocol):
    """A data module that samples patches: what two-phase training and the cascades need."""

    def set_patch_distribution(self, distribution: str) -> None:
        """Sample patch centres ``"balanced"`` over the classes (phase 1) or ``"natural"`` (phase 2)."""
        ...

    def cache_first_stage(
        self,
        first_stage: Callable[[torch.Tensor], torch.Tensor],
        key: str,
        margin: int,
        size: int,
        before: int,
        device: torch.device | str = "cpu",
        batch_slices: int = 8,
    ) -> list[Path]:
        """Compute a cascade's frozen first-stage maps over the training cases once and sample with them."""
        ...
