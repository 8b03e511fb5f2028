"""Whole-volume inference: every axial slice of a case through a fully convolutional net."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["FLIPS", "InputPadding", "flip_average", "predict_padded", "predict_volume", "tta_flips"]


@dataclass(frozen=True)
class InputPadding:
    """How a fully convolutional net takes a whole slice.

    Attributes:
        divisor: the padded side must be a multiple of it (pooling: the FCN's ``2 ** (n_blocks - 1)``).
        before, after: context the net's valid convolutions consume before and after each output
            pixel (a patch CNN's margin, e.g. 16 and 16 for 33x33 patches); the output is that much
            smaller than the padded input.
    """

    divisor: int = 1
    before: int = 0
    after: int = 0

    def pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``F.pad`` padding ``(left, right, top, bottom)`` of an ``h x w`` slice (``h`` on axis -2)."""
        ph = (-(h + self.before + self.after)) % self.divisor
        pw = (-(w + self.before + self.after)) % self.divisor
        return (self.before + pw // 2, self.after + pw - pw // 2, self.before + ph // 2, self.after + ph - ph // 2)

    def to_dict(self) -> dict[str, int]:
        return {"divisor": self.divisor, "before": self.before, "after": self.after}


def predict_padded(
    net_probs: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, padding: InputPadding
) -> torch.Tensor:
    """Class probabilities ``(N, K, H, W)`` of slices ``(N, C, H, W)`` from a net that wants ``padding``.

    ``net_probs`` maps the zero-padded slices to probabilities of every output pixel (a torch net, or
    an exported one run by onnxruntime); the result is cropped back to the slices' pixels.
    """
    h, w = x.shape[-2:]
    left, _, top, _ = pads = padding.pads(h, w)
    probs = net_probs(F.pad(x, pads))
    top, left = top - padding.before, left - padding.before
    return probs[..., top : top + h, left : left + w]


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


@torch.no_grad()
def predict_volume(
    predict_slices: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    batch_size: int = 16,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class probabilities of every voxel of a volume, slice batch by slice batch.

    Args:
        predict_slices: maps ``(N, C, H, W)`` slices to ``(N, K, H, W)`` probabilities.
        image: ``(Z, C, H, W)`` slices of one case.
        batch_size: slices per forward pass.
        mask: optional ``(Z, H, W)`` brain mask: slices without brain are not run, and every voxel
            outside the brain is background (the scans are skull-stripped: no tumour there).

    Returns:
        ``(Z, K, H, W)`` probabilities (float32, on ``image``'s device).
    """
    z = image.shape[0]
    run = torch.arange(z, device=image.device)
    if mask is not None and bool(mask.any()):
        run = run[mask.flatten(1).any(1)]
    out = None
    for s in range(0, len(run), batch_size):
        idx = run[s : s + batch_size]
        probs = predict_slices(image[idx]).float()
        if out is None:
            out = torch.zeros((z, probs.shape[1], *image.shape[-2:]), device=image.device)
            out[:, 0] = 1.0  # slices that are not run are background
        out[idx] = probs
    if out is None:
        raise ValueError("nothing to predict: the volume has no slices")
    if mask is not None and bool(mask.any()):
        background = torch.zeros(out.shape[1], device=out.device)
        background[0] = 1.0
        out = torch.where(mask[:, None], out, background.view(1, -1, 1, 1))
    return out
