"""Shen et al.'s slice augmentation (Sec. 3.1: scaling, rotation, flipping) as one batched transform on the
device, and the stronger augmentation of today's BraTS leaders as options.

Every slice of a batch gets its own random affine transform (a left-right flip with probability
``flip_prob``; with probability ``prob`` a rotation in ``[-rotate_deg, rotate_deg]`` and a scaling in
``[1 - scale, 1 + scale]`` about the centre), applied to all its channels at once with one
``grid_sample``: images (and symmetry maps) bilinear, labels nearest, zero outside. Image, label and
symmetry channels therefore move together; a left-right flip moves each symmetry-map value with its
pixel (the mirror axis flips with the image), so the maps stay valid.

Slices are ``(N, C, X, Y)`` with ``X`` left-right (the papers' axial slices, RAS order), so a
left-right flip reverses axis ``-2``.

Options (nnU-Net's augmentation, Isensee et al. 2021, Supplementary; off by default, the papers'):

* ``elastic_prob``: a smooth random displacement (Gaussian noise on a coarse grid, upsampled
  bicubically, ``elastic_alpha`` pixels at most) added to the same ``grid_sample``;
* ``intensity``: on the MR channels only (symmetry maps keep their values), each slice independently:
  Gaussian noise (p 0.1, variance up to 0.1), Gaussian blur (p 0.2, sigma 0.5-1), brightness (p 0.15,
  x0.75-1.25), contrast (p 0.15, x0.75-1.25 about the mean), simulated low resolution (p 0.25, down
  to half the size and back), gamma (p 0.3, 0.7-1.5 on the min-max range); ``strength`` scales every
  probability of these and of the elastic deformation; the background stays zero.

Every draw comes from the batch's generator after the papers' draws, so the papers' augmentation of
a seed is the same with the options off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool

from brats_lightning.schema import Int, Number, Strict

__all__ = ["AugmentOptions", "SliceAugment", "drop_modalities"]


class AugmentOptions(Strict):
    """The options of :class:`SliceAugment` (``data.augment_options``), checked."""

    rotate_deg: Annotated[Number, Field(ge=0, le=180)] = 10.0
    scale: Annotated[Number, Field(ge=0, lt=1)] = 0.1
    prob: Annotated[Number, Field(ge=0, le=1)] = 0.5
    flip_prob: Annotated[Number, Field(ge=0, le=1)] = 0.5
    elastic_prob: Annotated[Number, Field(ge=0, le=1)] = 0.0
    elastic_alpha: Annotated[Number, Field(ge=0, le=100)] = 6.0
    elastic_grid: Annotated[Int, Field(ge=2, le=64)] = 8
    intensity: StrictBool = False
    strength: Annotated[Number, Field(ge=0, le=4)] = 1.0


@dataclass(frozen=True)
class SliceAugment:
    """Random flips, rotations and scalings of a batch of slices, on the batch's device.

    Args:
        rotate_deg: largest rotation, in degrees.
        scale: largest relative scaling (``0.1``: 0.9x to 1.1x).
        prob: probability that a slice is rotated and scaled.
        flip_prob: probability that a slice is flipped left-right.

    Examples:
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
    elastic_prob: float = 0.0
    elastic_alpha: float = 6.0
    elastic_grid: int = 8
    intensity: bool = False
    strength: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prob", "flip_prob", "elastic_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= float(self.strength) <= 4.0:
            raise ValueError(f"strength must be in [0, 4], got {self.strength!r}")
        if float(self.elastic_alpha) < 0 or int(self.elastic_grid) < 2:
            raise ValueError("elastic_alpha must be >= 0 and elastic_grid >= 2")

    def random_params(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, 3)`` per slice: flip (0 or 1), angle (degrees), scale factor (drawn on the CPU)."""
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        flip = (u[:, 0] < self.flip_prob).double()
        on = u[:, 1] < self.prob
        angle = torch.where(on, (2 * u[:, 2] - 1) * self.rotate_deg, 0.0)
        factor = torch.where(on, 1 + (2 * u[:, 3] - 1) * self.scale, 1.0)
        return torch.stack([flip, angle, factor], dim=1)

    @staticmethod
    def apply(
        image: torch.Tensor, label: torch.Tensor, params: torch.Tensor, displacement: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform ``image`` ``(N, C, H, W)`` (float) and ``label`` ``(N, H, W)`` (integer) by ``params``.

        ``params`` rows are ``(flip, angle_degrees, scale)``: the output pixel at offset ``d`` from
        the centre shows the input at ``R(-angle) d / scale``, flipped along ``H`` when ``flip``.
        ``displacement`` ``(N, H, W, 2)`` is added to the sampling grid (normalised coordinates).
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
        if displacement is not None:
            grid = grid + displacement.to(grid.device, grid.dtype)
        out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        lab = F.grid_sample(label[:, None].to(image.dtype), grid.to(image.dtype), mode="nearest", align_corners=False)
        return out, lab[:, 0].round().to(label.dtype)

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        generator: torch.Generator,
        intensity_channels: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch with parameters drawn from ``generator`` (a CPU generator).

        Args:
            image: ``(N, C, H, W)`` float slices.
            label: ``(N, H, W)`` classes.
            generator: the batch's random stream.
            intensity_channels: the MR channels the intensity transforms change (default: all).
        """
        n, _, h, w = image.shape
        params = self.random_params(n, generator)
        displacement = self.random_displacement(n, h, w, generator) if self.elastic_prob > 0 else None
        image, label = self.apply(image, label, params, displacement)
        if self.intensity:
            channels = list(range(image.shape[1])) if intensity_channels is None else list(intensity_channels)
            image = self.intensity_transform(image, channels, generator)
        return image, label

    def random_displacement(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, h, w, 2)`` smooth displacements in grid units: zero for slices not drawn (``elastic_prob``)."""
        on = torch.rand(n, generator=generator) < self.elastic_prob * min(1.0, self.strength)
        g = int(self.elastic_grid)
        coarse = torch.randn(n, 2, g, g, generator=generator) * on.view(-1, 1, 1, 1)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        # alpha pixels at one standard deviation, in normalised coordinates (2 / size per pixel)
        scale = torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1) * float(self.elastic_alpha)
        return (field * scale).permute(0, 2, 3, 1)

    def intensity_transform(self, image: torch.Tensor, channels: list[int], generator: torch.Generator) -> torch.Tensor:
        """nnU-Net's intensity transforms on ``channels`` of a batch, each slice with its own draws."""
        n = image.shape[0]
        s = float(self.strength)
        u = torch.rand(n, 14, generator=generator, dtype=torch.float64)
        dev, dt = image.device, image.dtype

        def col(i: int) -> torch.Tensor:
            return u[:, i].to(dev, torch.float32).view(-1, 1, 1, 1)

        x = image[:, channels].float()
        brain = (x != 0).any(1, keepdim=True)
        # Gaussian noise, variance U(0, 0.1)
        noise = torch.randn(x.shape, generator=generator).to(dev) * (col(1) * 0.1).sqrt()
        x = torch.where(col(0) < 0.1 * s, x + noise, x)
        # Gaussian blur, sigma U(0.5, 1): a 5-tap separable kernel per slice
        on = u[:, 2] < 0.2 * s
        if bool(on.any()):
            sigma = (0.5 + 0.5 * u[:, 3]).to(torch.float32)
            taps = torch.arange(-2, 3, dtype=torch.float32)
            k = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
            k = (k / k.sum(1, keepdim=True)).to(dev)
            c = x.shape[1]
            kk = k.repeat_interleave(c, 0)
            flat = x.reshape(1, n * c, *x.shape[2:])
            flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), kk.view(-1, 1, 5, 1), groups=n * c)
            flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kk.view(-1, 1, 1, 5), groups=n * c)
            x = torch.where(on.to(dev).view(-1, 1, 1, 1), flat.view_as(x), x)
        # brightness: x U(0.75, 1.25)
        x = torch.where(col(4) < 0.15 * s, x * (0.75 + 0.5 * col(5)), x)
        # contrast: about the mean inside the brain, x U(0.75, 1.25)
        mean = (x * brain).sum((2, 3), keepdim=True) / brain.sum((2, 3), keepdim=True).clamp(min=1)
        x = torch.where(col(6) < 0.15 * s, (x - mean) * (0.75 + 0.5 * col(7)) + mean, x)
        # simulated low resolution: nearest down to U(0.5, 1) of the size, bilinear back (per slice)
        for i in torch.nonzero(u[:, 8] < 0.25 * s).flatten().tolist():
            f = 0.5 + 0.5 * float(u[i, 9])
            small = F.interpolate(x[i : i + 1], scale_factor=f, mode="nearest")
            x[i : i + 1] = F.interpolate(small, size=x.shape[2:], mode="bilinear", align_corners=False)
        # gamma U(0.7, 1.5) on the min-max range of each slice and channel
        lo = x.amin((2, 3), keepdim=True)
        span = (x.amax((2, 3), keepdim=True) - lo).clamp(min=1e-6)
        gamma = torch.where(col(11) < 0.5, 0.7 + 0.6 * col(12), 1.0 + 0.5 * col(12))
        x = torch.where(col(10) < 0.3 * s, ((x - lo) / span).clamp(0, 1) ** gamma * span + lo, x)
        out = image.clone()
        out[:, channels] = (x * brain).to(dt)
        return out


def drop_modalities(
    image: torch.Tensor, generator: torch.Generator, p: float, channels: dict[str, list[int]]
) -> torch.Tensor:
    """Zero whole modalities of a batch of training slices ``(N, C, H, W)``, each with probability ``p``.

    A slice that would lose every modality keeps one (drawn at random). ``channels`` maps each modality to
    the input channels that carry it (its image and symmetry map in every context slice,
    :func:`~brats_lightning.data.channels.modality_channels`), so a missing sequence takes its map with it.
    """
    n, m = image.shape[0], len(channels)
    drop = torch.rand(n, m, generator=generator) < p
    keep = torch.randint(0, m, (n,), generator=generator)
    drop[torch.arange(n), keep] &= ~drop.all(1)  # a slice that would lose every modality keeps one
    if not bool(drop.any()):
        return image
    out = image.clone()
    for j, modality in enumerate(channels):
        rows = torch.nonzero(drop[:, j]).flatten().to(image.device)
        if rows.numel():
            out[rows[:, None], torch.tensor(channels[modality], device=image.device)[None]] = 0
    return out
