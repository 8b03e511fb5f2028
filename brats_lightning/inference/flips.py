"""Test-time flips: a slice batch and its in-plane mirror images, their probabilities averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, field_validator

from brats_lightning.errors import CheckpointError
from brats_lightning.schema import Name, Strict, validate

__all__ = ["FLIPS", "check_flips", "flip_average", "flip_names", "tta_flips"]


#: in-plane flips by name, as dims of ``(N, C, X, Y)`` RAS slices
FLIPS: dict[str, tuple[int, ...]] = {"lr": (2,), "ap": (3,)}


def tta_flips(names: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The flips named (``lr``: left-right mirroring, ``ap``: anterior-posterior).

    Raises:
        ValueError: an unknown name.
    """
    bad = [n for n in names if n not in FLIPS]
    if bad:
        raise ValueError(f"unknown test-time flip(s) {bad}; expected some of {sorted(FLIPS)}")
    return tuple(FLIPS[n] for n in dict.fromkeys(names))


def flip_average(
    predict_slices: Callable[[torch.Tensor], torch.Tensor], flips: tuple[tuple[int, ...], ...]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Test-time augmentation: the mean of the probabilities of the slices and of their flips.

    Args:
        predict_slices: ``(N, C, H, W)`` slices -> ``(N, K, H, W)`` probabilities.
        flips: the flips besides the identity, as tensor dims (``(2,)``: left-right in the RAS slices
            of this package, whose axis -2 is x; ``(3,)``: anterior-posterior). Every input channel is
            flipped, symmetry maps included: the map of a mirrored image is the mirrored map.
    """
    if not flips:
        return predict_slices

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = predict_slices(x).float()
        for dims in flips:
            total = total + predict_slices(x.flip(dims)).float().flip(dims)
        return total / (1 + len(flips))

    return averaged


def flip_names(v: list[str]) -> list[str]:
    """``v`` if every name is a flip of :data:`FLIPS` (a validator).

    Raises:
        ValueError: an unknown name.
    """
    bad = [f for f in v if f not in FLIPS]
    if bad:
        raise ValueError(f"unknown flips {bad} (expected some of {sorted(FLIPS)})")
    return v


class _Flips(Strict):
    tta_flips: Annotated[list[Name], Field(max_length=4)]

    @field_validator("tta_flips")
    @classmethod
    def _flips(cls, v: list[str]) -> list[str]:
        return flip_names(v)


def check_flips(data: Any, source: str | Path) -> list[str]:
    """Stored test-time flips (``None``: none) as a validated list.

    Raises:
        CheckpointError: naming ``source`` and the problem (``"lr"`` is not a list of flips).
    """
    if data is None:
        return []
    return list(validate(_Flips, {"tta_flips": data}, source, CheckpointError).tta_flips)
