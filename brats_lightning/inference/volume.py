"""Whole-volume inference: every axial slice of a case through a fully convolutional net.

Slices are padded as the net needs (:class:`InputPadding`), batched over the brain's slices, and given
their 2.5D context (:func:`with_context`: each slice with its neighbours as extra channels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["InputPadding", "predict_padded", "predict_volume", "with_context"]


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


def with_context(image: torch.Tensor, idx: torch.Tensor, context: int) -> torch.Tensor:
    """Slices ``idx`` of ``image`` ``(Z, C, H, W)`` with their ``context`` neighbours on each side as channels.

    Returns ``(len(idx), C * (2 * context + 1), H, W)``: slice ``z - context`` first, ``z`` in the middle;
    neighbours beyond the volume are zeros (the background of the z-scored, skull-stripped images).
    """
    if context == 0:
        return image[idx]
    z = image.shape[0]
    parts = []
    for d in range(-context, context + 1):
        j = idx + d
        inside = (j >= 0) & (j < z)
        part = image[j.clamp(0, z - 1)]
        parts.append(part * inside.view(-1, 1, 1, 1).to(part.dtype))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def predict_volume(
    predict_slices: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    batch_size: int = 16,
    mask: torch.Tensor | None = None,
    context: int = 0,
) -> torch.Tensor:
    """Class probabilities of every voxel of a volume, slice batch by slice batch.

    Args:
        predict_slices: maps ``(N, C, H, W)`` slices to ``(N, K, H, W)`` probabilities.
        image: ``(Z, C, H, W)`` slices of one case.
        batch_size: slices per forward pass.
        mask: optional ``(Z, H, W)`` brain mask: slices without brain are not run, and every voxel
            outside the brain is background (the scans are skull-stripped: no tumour there).
        context: neighbouring slices on each side given as extra channels (2.5D, :func:`with_context`).

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
        probs = predict_slices(with_context(image, idx, context)).float()
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
