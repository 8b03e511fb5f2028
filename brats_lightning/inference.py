"""Whole-volume inference: every axial slice of a case through a fully convolutional net."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["pad_to_multiple", "predict_volume"]


def pad_to_multiple(x: torch.Tensor, divisor: int, extra: int = 0) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two axes by ``extra`` on every side, then up to a multiple of ``divisor``.

    Returns:
        The padded tensor and the padding ``(left, right, top, bottom)`` in ``F.pad`` order.
    """
    h, w = x.shape[-2:]
    ph = (-(h + 2 * extra)) % divisor
    pw = (-(w + 2 * extra)) % divisor
    pad = (extra + pw // 2, extra + pw - pw // 2, extra + ph // 2, extra + ph - ph // 2)
    return F.pad(x, pad), pad


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
