"""Shen et al.'s slice augmentation (Sec. 3.1: scaling, rotation, flipping) as one batched transform on the device.

Every slice of a batch gets its own random affine transform (a left-right flip with probability
``flip_prob``; with probability ``prob`` a rotation in ``[-rotate_deg, rotate_deg]`` and a scaling in
``[1 - scale, 1 + scale]`` about the centre), applied to all its channels at once with one
``grid_sample``: images (and symmetry maps) bilinear, labels nearest, zero outside. Image, label and
symmetry channels therefore move together; a left-right flip moves each symmetry-map value with its
pixel (the mirror axis flips with the image), so the maps stay valid.

Slices are ``(N, C, X, Y)`` with ``X`` left-right (the papers' axial slices, RAS order), so a
left-right flip reverses axis ``-2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SliceAugment"]


@dataclass(frozen=True)
class SliceAugment:
    """Random flips, rotations and scalings of a batch of slices, on the batch's device.

    Args:
        rotate_deg: largest rotation, in degrees.
        scale: largest relative scaling (``0.1``: 0.9x to 1.1x).
        prob: probability that a slice is rotated and scaled.
        flip_prob: probability that a slice is flipped left-right.

    Example:
        >>> aug = SliceAugment()
        >>> x, y = torch.zeros(2, 8, 16, 20), torch.zeros(2, 16, 20, dtype=torch.long)
        >>> xa, ya = aug(x, y, torch.Generator().manual_seed(0))
        >>> xa.shape, ya.dtype
        (torch.Size([2, 8, 16, 20]), torch.int64)
    """

    rotate_deg: float = 10.0
    scale: float = 0.1
    prob: float = 0.5
    flip_prob: float = 0.5

    def random_params(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, 3)`` per slice: flip (0 or 1), angle (degrees), scale factor (drawn on the CPU)."""
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        flip = (u[:, 0] < self.flip_prob).double()
        on = u[:, 1] < self.prob
        angle = torch.where(on, (2 * u[:, 2] - 1) * self.rotate_deg, 0.0)
        factor = torch.where(on, 1 + (2 * u[:, 3] - 1) * self.scale, 1.0)
        return torch.stack([flip, angle, factor], dim=1)

    @staticmethod
    def apply(image: torch.Tensor, label: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform ``image`` ``(N, C, H, W)`` (float) and ``label`` ``(N, H, W)`` (integer) by ``params``.

        ``params`` rows are ``(flip, angle_degrees, scale)``: the output pixel at offset ``d`` from
        the centre shows the input at ``R(-angle) d / scale``, flipped along ``H`` when ``flip``.
        """
        n, _, h, w = image.shape
        flip, angle, factor = params[:, 0], torch.deg2rad(params[:, 1]), params[:, 2]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # pixel-space matrix acting on (w, h) offsets from the centre: rotation / scale, then the flip of h
        sign = 1 - 2 * flip
        a = (
            torch.stack([torch.stack([cos, -sin * sign], 1), torch.stack([sin, cos * sign], 1)], 1)
            / factor[:, None, None]
        )
        # affine_grid works in coordinates normalised by the half-sizes: conjugate by them
        half = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64)
        a = a * half[None, None, :] / half[None, :, None]
        theta = torch.cat([a, torch.zeros(n, 2, 1, dtype=torch.float64)], dim=2).to(image.device, torch.float32)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        lab = F.grid_sample(label[:, None].to(image.dtype), grid.to(image.dtype), mode="nearest", align_corners=False)
        return out, lab[:, 0].round().to(label.dtype)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch with parameters drawn from ``generator`` (a CPU generator)."""
        return self.apply(image, label, self.random_params(image.shape[0], generator))
