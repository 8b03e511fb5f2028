"""Symmetry maps of Shen et al. (ICIP 2017, Sec. 2.2), vectorised in torch.

For every axial slice and modality the map says how much a pixel differs from its best match
around the mirrored position on the other side of the mid-sagittal symmetry axis:

1. locate the symmetry axis on the T1 image (:func:`estimate_axis`);
2. smooth every image with a 5x5 Gaussian;
3. for each pixel, search an 11x11 window centred on its mirror position for the pixel whose
   intensity is closest to its own, and take the signed intensity difference;
4. squash the difference to ``[0, 1]`` with a sigmoid.

Readings taken where the paper is silent (all are arguments):

* The axis is estimated once per volume from the T1 stack (BraTS volumes are co-registered, so the
  mid-sagittal plane cuts every axial slice along the same line). It is the line maximising the
  correlation between the T1 image (averaged over the brain's slices) and its mirror image, found
  by an exhaustive search over angles (coarse 1 degree, then 0.1 degree) and, for each angle, over
  every half-pixel position with one FFT autocorrelation. Axes tilted by less than ``min_angle``
  degrees are treated as parallel to the image columns (the 11x11 search absorbs the error); for
  larger tilts the slices are resampled so that the axis is a column, and the maps rotated back.
* "Difference" is the signed ``I(p) - I(q*)``, ``q*`` the window pixel with the smallest absolute
  difference (ties: the positive one), so the map is 0.5 where the brain is symmetric, above 0.5
  where a pixel is brighter than anything near its mirror (e.g. edema on FLAIR), below where darker.
  The sigmoid is applied to ``difference / scale``, with intensities z-scored beforehand.
* The 5x5 Gaussian has sigma 1.1 (OpenCV's default for a 5x5 kernel). Window pixels outside the
  image are skipped; pixels outside the brain mask get 0.5.

Speed: the search costs 121 passes of 4 element-wise operations over the brain's bounding box only
(by chunks of 4 slices on the CPU, so that the data stay in cache; per volume on a GPU). The best match is
tracked through reciprocals: ``max(1/u)`` over the window is ``1/u`` of the smallest positive
difference ``u`` and ``min(1/u)`` that of the negative one closest to zero, which needs no masks
or ``where`` in the inner loop. See ``benchmarks/bench_symmetry.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SymmetryAxis",
    "estimate_axis",
    "gaussian_smooth",
    "straighten",
    "symmetry_difference",
    "symmetry_maps",
    "volume_symmetry_maps",
]


@dataclass(frozen=True)
class SymmetryAxis:
    """The mid-sagittal symmetry axis of a stack of axial slices ``(..., H, W)``.

    The slices' height axis ``H`` runs left-right. The axis is the line through the point
    ``(center_h, center_w)`` with direction ``(sin(angle), cos(angle))`` in ``(h, w)`` pixel
    coordinates, i.e. tilted by ``angle`` degrees from the ``W`` (anterior-posterior) direction.
    ``center_h`` is a multiple of 0.5: after rotating the slices about that point by ``angle`` the
    axis is row ``center_h`` and mirroring maps pixels onto pixels.
    """

    angle: float
    center_h: float
    center_w: float

    def mirror_index(self) -> int:
        """``k = 2 * center_h``: in the straightened frame row ``h`` mirrors onto row ``k - h``."""
        return int(round(2 * self.center_h))


def gaussian_smooth(x: torch.Tensor, kernel_size: int = 5, sigma: float = 1.1) -> torch.Tensor:
    """Separable 2D Gaussian smoothing of ``(N, C, H, W)`` with replicate padding.

    Written as weighted sums of shifted views: on the CPU this is ~20x faster than ``conv2d``
    with a single-channel kernel.
    """
    if kernel_size <= 1:
        return x
    r = kernel_size // 2
    t = torch.arange(kernel_size, dtype=torch.float64) - r
    k = torch.exp(-(t**2) / (2 * sigma**2))
    weights = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    p = F.pad(x if x.dim() == 4 else x[None], (r, r, r, r), mode="replicate")
    if x.dim() != 4:
        p = p[0]
    y = p[..., 0:h, :] * weights[0]
    for i in range(1, kernel_size):
        y.add_(p[..., i : i + h, :], alpha=weights[i])
    out = y[..., 0:w] * weights[0]
    for i in range(1, kernel_size):
        out.add_(y[..., i : i + w], alpha=weights[i])
    return out


def _rotate(
    x: torch.Tensor,
    angle: float,
    center_h: float,
    center_w: float,
    inverse: bool = False,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Rotate ``(N, C, H, W)`` about ``(center_h, center_w)``.

    With ``inverse=False`` the output at offset ``(dh, dw)`` from the centre samples the input at
    ``(dh cos a + dw sin a, -dh sin a + dw cos a)``: a line through the centre with direction
    ``(sin a, cos a)`` becomes the row ``h = center_h``. ``inverse=True`` undoes it. Pixels from
    outside the input are 0.
    """
    n, _, h, w = x.shape
    a = math.radians(angle if not inverse else -angle)
    ca, sa = math.cos(a), math.sin(a)
    dh = torch.arange(h, dtype=x.dtype, device=x.device) - center_h
    dw = torch.arange(w, dtype=x.dtype, device=x.device) - center_w
    dh, dw = torch.meshgrid(dh, dw, indexing="ij")
    src_h = center_h + dh * ca + dw * sa
    src_w = center_w - dh * sa + dw * ca
    # grid_sample wants (x=W, y=H) in [-1, 1] with align_corners=True
    grid = torch.stack((2 * src_w / max(w - 1, 1) - 1, 2 * src_h / max(h - 1, 1) - 1), dim=-1)
    grid = grid.unsqueeze(0).expand(n, h, w, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)


def estimate_axis(
    ref: torch.Tensor,
    mask: torch.Tensor | None = None,
    max_angle: float = 15.0,
    coarse_step: float = 1.0,
    fine_step: float = 0.1,
) -> SymmetryAxis:
    """Estimate the mid-sagittal axis of a stack of axial slices from the reference (T1) image.

    Args:
        ref: ``(N, H, W)`` or ``(H, W)`` reference image; ``H`` runs left-right.
        mask: brain mask of the same shape (default: ``ref > 0``).
        max_angle: largest tilt searched, in degrees.
        coarse_step: angle step of the first search.
        fine_step: angle step of the refinement (within one coarse step of the best angle).

    Returns:
        The axis maximising the correlation of the image with its mirror image.
    """
    if ref.dim() == 2:
        ref = ref.unsqueeze(0)
    if mask is None:
        mask = ref > 0
    mask = mask.to(torch.bool)
    h, w = ref.shape[-2:]
    zs = torch.nonzero(mask.flatten(1).any(1)).flatten()
    if zs.numel() == 0:
        return SymmetryAxis(0.0, (h - 1) / 2, (w - 1) / 2)
    # Work on the brain's box only.
    h0, h1, w0, w1 = _bbox(mask.any(0))  # type: ignore[misc]
    sub = ref[int(zs[0]) : int(zs[-1]) + 1, h0:h1, w0:w1].float()
    msub = mask[int(zs[0]) : int(zs[-1]) + 1, h0:h1, w0:w1]
    # Robust intensities: clip to the 1st-99th percentiles inside the brain (estimated on a strided
    # subsample), so that a few very bright voxels (vessels, fat) cannot drag the axis through themselves.
    vals = sub[msub]
    vals = vals[:: max(1, vals.numel() // 200_000)]
    lo, hi = torch.quantile(vals, torch.tensor([0.01, 0.99], device=vals.device)).tolist()
    if hi - lo > 1e-6:
        summary = torch.where(msub, sub.clamp(lo, hi) - lo, torch.zeros((), device=ref.device)).mean(0)
    else:  # a constant image: clipping leaves nothing, so the brain's shape carries the symmetry
        summary = msub.float().mean(0)
    img = torch.zeros((h, w), device=ref.device)
    img[h0:h1, w0:w1] = summary  # (H, W) summary of the brain's slices
    hs, ws = torch.nonzero(msub.any(0), as_tuple=True)
    ch, cw = hs.float().mean().item() + h0, ws.float().mean().item() + w0
    img = img / img.abs().max().clamp_min(1e-12)

    def best_for(angles: torch.Tensor) -> tuple[float, float, float]:
        rot = torch.cat([_rotate(img[None, None], float(a), ch, cw) for a in angles])[:, 0]  # (A, H, W)
        h = rot.shape[1]
        nfft = 2 * h
        spec = torch.fft.rfft(rot, n=nfft, dim=1)
        # sum over columns of the self-convolution of each column profile along H: s[k] = sum_h f(h) f(k - h)
        conv = torch.fft.irfft(spec * spec, n=nfft, dim=1).sum(-1)[:, : 2 * h - 1]  # (A, 2H-1)
        # Normalise by the energy: bilinear resampling at non-zero angles loses a little of it.
        score, k = (conv / (rot * rot).sum(dim=(1, 2)).clamp_min(1e-12)[:, None]).max(dim=1)
        i = int(score.argmax())
        return float(angles[i]), float(k[i]) / 2.0, float(score[i])

    coarse = torch.arange(-max_angle, max_angle + 1e-6, coarse_step, device=ref.device)
    a0, _, _ = best_for(coarse)
    # refine within one coarse step, but never beyond the searched range
    lo, hi = max(a0 - coarse_step, -max_angle), min(a0 + coarse_step, max_angle)
    fine = torch.arange(lo, hi + 1e-6, fine_step, device=ref.device)
    angle, row, _ = best_for(fine)
    angle = round(angle / fine_step) * fine_step + 0.0  # undo float drift of arange; -0.0 -> 0.0
    if abs(angle) < fine_step / 2:
        return SymmetryAxis(0.0, row, cw)
    # In the frame rotated about (ch, cw) the axis is the row `row`; map that row's point at the
    # pivot column back to the original frame, then slide along the axis to a half-integer row.
    t = math.radians(angle)
    qh = ch + (row - ch) * math.cos(t)
    qw = cw - (row - ch) * math.sin(t)
    s = (round(2 * qh) / 2 - qh) / math.sin(t)
    return SymmetryAxis(round(angle, 6), round(2 * qh) / 2, qw + s * math.cos(t))


def _search(a: torch.Tensor, b_pad: torch.Tensor, radius: int) -> torch.Tensor:
    """Signed difference to the closest value of every ``(2r+1)^2`` window of ``b_pad``.

    ``a`` is ``(..., H, W)``; ``b_pad`` is ``(..., H + 2r, W + 2r)`` and pixel ``(h, w)`` of ``a`` is
    compared with ``b_pad[..., h:h+2r+1, w:w+2r+1]``. Invalid window pixels hold ``inf``.
    """
    h, w = a.shape[-2:]
    k = 2 * radius + 1
    v = torch.empty_like(a)
    pmax = torch.full_like(a, -math.inf)  # max of 1/u: 1/(smallest positive u)
    nmin = torch.full_like(a, math.inf)  # min of 1/u: 1/(negative u closest to 0)
    for dy in range(k):
        for dx in range(k):
            torch.sub(a, b_pad[..., dy : dy + h, dx : dx + w], out=v)
            v.reciprocal_()
            torch.maximum(pmax, v, out=pmax)
            torch.minimum(nmin, v, out=nmin)
    # u = a - inf -> 1/u = -0.0: never wins against a real candidate (the centre column is always valid).
    best = torch.where(pmax >= -nmin, pmax, nmin)
    return best.reciprocal_()


def _bbox(m: torch.Tensor) -> tuple[int, int, int, int] | None:
    rows = torch.nonzero(m.any(-1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(m.any(-2)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def symmetry_difference(
    slices: torch.Tensor,
    mask: torch.Tensor | None,
    axis: SymmetryAxis,
    window: int = 11,
    chunk: int | None = None,
) -> torch.Tensor:
    """Signed difference of every pixel to its best match near the mirrored position.

    Operates on already smoothed images; see :func:`symmetry_maps` for the full pipeline.

    Args:
        slices: ``(N, C, H, W)`` images (``H`` left-right).
        mask: ``(N, H, W)`` brain mask; outside it the difference is 0. ``None``: everywhere.
        axis: the symmetry axis (its tilt must already be corrected: only ``center_h`` is used).
        window: side of the square search window (11 in the paper).
        chunk: slices processed together (default: 4 on the CPU, measured best for cache use and
            per-op overhead; all at once on other devices).

    Returns:
        ``(N, C, H, W)`` signed differences.
    """
    if window % 2 != 1:
        raise ValueError(f"window must be odd, got {window}")
    n, c, h, w = slices.shape
    r = window // 2
    k = axis.mirror_index()
    if mask is None:
        mask = torch.ones((n, h, w), dtype=torch.bool, device=slices.device)
    # Pixels whose window reaches at least one mirrored row inside the image.
    rows = torch.arange(h, device=slices.device)
    valid_rows = (k - rows >= -r) & (k - rows <= h - 1 + r)
    mask = mask & valid_rows.view(1, h, 1)
    out = torch.zeros_like(slices)
    if chunk is None:
        chunk = 4 if slices.device.type == "cpu" else n
    for s in range(0, n, chunk):
        m = mask[s : s + chunk]
        box = _bbox(m.any(0))
        if box is None:
            continue
        h0, h1, w0, w1 = box
        a = slices[s : s + chunk, :, h0:h1, w0:w1].contiguous()
        # Mirrored rows around the box, padded by r with +inf: bp[.., i, j] holds
        # slices[.., k - (h0 - r + i), w0 - r + j] where that pixel exists.
        bp = slices.new_full((a.shape[0], c, h1 - h0 + 2 * r, w1 - w0 + 2 * r), math.inf)
        src = k - torch.arange(h0 - r, h1 + r, device=slices.device)
        ok = (src >= 0) & (src < h)
        c0, c1 = max(w0 - r, 0), min(w1 + r, w)
        bp[:, :, torch.nonzero(ok).flatten(), c0 - (w0 - r) : c1 - (w0 - r)] = slices[s : s + chunk, :, src[ok], c0:c1]
        d = _search(a, bp, r)
        out[s : s + chunk, :, h0:h1, w0:w1] = torch.where(m[:, None, h0:h1, w0:w1], d, 0.0)
    return out


@torch.no_grad()
def symmetry_maps(
    slices: torch.Tensor,
    mask: torch.Tensor | None = None,
    ref_channel: int = 1,
    axis: SymmetryAxis | None = None,
    window: int = 11,
    kernel_size: int = 5,
    sigma: float = 1.1,
    scale: float = 1.0,
    min_angle: float = 1.0,
    max_angle: float = 15.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """Symmetry maps of Shen et al. Sec. 2.2 for a stack of axial slices, on the tensor's device.

    Args:
        slices: ``(N, C, H, W)`` z-scored images of one volume (``H`` left-right).
        mask: ``(N, H, W)`` brain mask (default: any channel non-zero).
        ref_channel: channel used to locate the axis (T1 in the paper; index 1 in
            :data:`brats_lightning.data.readers.MODALITIES`).
        axis: a known axis; estimated from ``ref_channel`` when ``None``.
        window: search window side (11).
        kernel_size: Gaussian kernel side (5).
        sigma: Gaussian sigma.
        scale: the sigmoid is applied to ``difference / scale``.
        min_angle: tilts below this (degrees) are not resampled.
        max_angle: largest tilt searched when estimating the axis.
        chunk: slices per search pass (see :func:`symmetry_difference`).

    Returns:
        ``(N, C, H, W)`` maps in ``[0, 1]``; 0.5 means symmetric.

    Examples:
        >>> x = torch.zeros(3, 4, 32, 24); x[:, :, 4:28, 4:20] = 1.0; x[:, 0, 6:10, 8:12] = 5.0
        >>> maps = symmetry_maps(x)
        >>> bool(maps[1, 0, 8, 10] > 0.9), bool((maps[1, 1] - 0.5).abs().max() < 1e-6)
        (True, True)
    """
    if slices.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) slices, got shape {tuple(slices.shape)}")
    x = slices.float()
    if mask is None:
        mask = (x != 0).any(1)
    mask = mask.to(torch.bool)
    if axis is None:
        axis = estimate_axis(x[:, ref_channel], mask, max_angle=max_angle)
    out = torch.full_like(x, 0.5)
    # Work on the brain's box (slices with brain; rows covering the brain and its mirror image;
    # margins for smoothing, search window and rotation): same result, a fraction of the work.
    zs = torch.nonzero(mask.flatten(1).any(1)).flatten()
    if zs.numel() == 0:
        return out
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    h0, h1, w0, w1 = _bbox(mask[z0:z1].any(0))  # type: ignore[misc]
    h, w = x.shape[-2:]
    k = axis.mirror_index()
    rot = 0
    if abs(axis.angle) >= min_angle:
        radius = math.hypot(max(h1 - axis.center_h, axis.center_h - h0), max(w1 - axis.center_w, axis.center_w - w0))
        rot = int(math.ceil(radius * math.sin(math.radians(abs(axis.angle))))) + 1
    margin = window // 2 + kernel_size // 2 + 2 + rot
    hb0 = max(min(h0, k - h1 + 1) - margin, 0)
    hb1 = min(max(h1, k - h0 + 1) + margin, h)
    wb0, wb1 = max(w0 - margin, 0), min(w1 + margin, w)
    xc = x[z0:z1, :, hb0:hb1, wb0:wb1]
    mc = mask[z0:z1, hb0:hb1, wb0:wb1]
    axc = SymmetryAxis(axis.angle, axis.center_h - hb0, axis.center_w - wb0)
    xc = gaussian_smooth(xc, kernel_size, sigma)
    xt, mt = straighten(xc, mc, axc, min_angle)
    d = symmetry_difference(xt, mt, axc, window=window, chunk=chunk)
    if abs(axis.angle) >= min_angle:
        d = _rotate(d, axc.angle, axc.center_h, axc.center_w, inverse=True)
        d = torch.where(mc[:, None], d, 0.0)
    out[z0:z1, :, hb0:hb1, wb0:wb1] = torch.sigmoid(d / scale)
    return out


def straighten(
    x: torch.Tensor, mask: torch.Tensor, axis: SymmetryAxis, min_angle: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate slices ``(N, C, H, W)`` and mask ``(N, H, W)`` so that the axis is the row ``axis.center_h``.

    Tilts below ``min_angle`` degrees are left alone (returned unchanged).
    """
    if abs(axis.angle) < min_angle:
        return x, mask
    xt = _rotate(x, axis.angle, axis.center_h, axis.center_w)
    mt = _rotate(mask[:, None].float(), axis.angle, axis.center_h, axis.center_w, mode="nearest")[:, 0] > 0.5
    return xt, mt


def volume_symmetry_maps(
    image: np.ndarray, mask: np.ndarray | None = None, device: str | torch.device = "cpu", **kwargs
) -> np.ndarray:
    """Symmetry maps of a ``(C, X, Y, Z)`` RAS volume (X left-right), returned in the same layout.

    Keyword arguments go to :func:`symmetry_maps`.
    """
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device).permute(3, 0, 1, 2)
    m = None if mask is None else torch.from_numpy(np.asarray(mask, bool)).to(device).permute(2, 0, 1)
    return symmetry_maps(x, m, **kwargs).permute(1, 2, 3, 0).cpu().numpy()
