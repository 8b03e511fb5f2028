"""The tumour of the synthetic phantom: a necrotic core in an enhancing rim, non-enhancing tumour and edema that
follows the white matter, with the mass effect that pushes the healthy tissue away (see
:mod:`brats_lightning.data.synthetic.phantom`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from brats_lightning.data.synthetic.anatomy import Frame, brain_radius, sigmoid, smooth_noise, soft_edge

__all__ = ["tumour"]


def _place_tumour(
    fr: Frame, rng: np.random.Generator, r_core_mm: float, r_whole_mm: float
) -> tuple[float, float, float]:
    """Centre (mm) of a tumour (core and whole-tumour radii given), well inside one hemisphere."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    best: tuple[float, float, float] | None = None
    for _ in range(40):
        u, v, w = rng.uniform(0.22, 0.62), rng.uniform(-0.6, 0.55), rng.uniform(-0.2, 0.5)
        c = (side * u * fr.A, v * fr.B, w * fr.C)
        rho = float(brain_radius(fr, *(np.float32(t) for t in c)))
        depth = float(np.sqrt(c[0] ** 2 + c[1] ** 2 + c[2] ** 2)) * (1.0 / max(rho, 1e-3) - 1.0)
        if best is None:
            best = c
        if depth > 1.1 * r_core_mm + 4.0 and abs(c[0]) > max(0.8 * r_whole_mm, r_core_mm + 4.0):
            return c
    assert best is not None
    return best


def tumour(
    fr: Frame, tissues: dict[str, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, tuple[slice, slice, slice], dict[str, np.ndarray]]:
    """Draw a tumour, push the healthy tissue away from it (in place) and label it.

    Returns:
        The label map over the crop (uint8), the slices (in the crop) of the tumour's box, and
        the soft maps inside that box: ``nec``, ``enh``, ``net`` (core compartments), ``edema``
        (fraction of oedematous tissue) and ``texture``.
    """
    h = fr.h
    brain_vox = float(tissues["brain"].sum())
    f_wt = float(np.exp(rng.uniform(np.log(0.025), np.log(0.15))))  # about the whole tumour's share
    r_wt = 1.12 * (3.0 * f_wt * brain_vox / (4.0 * np.pi)) ** (1.0 / 3.0)  # voxels
    k_core = rng.uniform(0.38, 0.78)
    r_c = k_core * r_wt
    c_mm = _place_tumour(fr, rng, r_c * h, r_wt * h)
    c_vox = [c_mm[i] / h + fr.centre[i] - fr.crop[i].start for i in range(3)]  # crop indices

    # box of the mass effect (which covers everything else)
    r_m = 1.9 * r_wt
    lo = [max(int(np.floor(c_vox[i] - r_m)), 0) for i in range(3)]
    hi = [min(int(np.ceil(c_vox[i] + r_m)) + 1, fr.cshape[i]) for i in range(3)]
    sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    px, py, pz = (
        (np.arange(sl[i].start, sl[i].stop, dtype=np.float32) - np.float32(c_vox[i])).reshape(
            [-1 if j == i else 1 for j in range(3)]
        )
        for i in range(3)
    )
    box = tuple(s.stop - s.start for s in sl)
    r = np.sqrt(px * px + py * py + pz * pz)

    # mass effect: radial push alpha * r * (1 - r^2/R^2)^2 (a monotonic map for alpha < 1)
    alpha = rng.uniform(0.2, 0.5) * k_core
    keep = 1.0 - alpha * np.clip(1.0 - (r / np.float32(r_m)) ** 2, 0.0, None) ** 2
    coords = np.empty((3, *box), np.float32)
    coords[0] = np.float32(c_vox[0]) + px * keep
    coords[1] = np.float32(c_vox[1]) + py * keep
    coords[2] = np.float32(c_vox[2]) + pz * keep
    del keep
    warped = {}
    for key in ("csf", "gm", "dgm", "plexus"):  # (sampled points stay inside the box)
        if tissues[key][sl].any():
            warped[key] = ndimage.map_coordinates(tissues[key], coords, order=1, mode="nearest")
        else:
            warped[key] = np.zeros(box, np.float32)
    del coords
    warped["wm"] = np.clip(1.0 - warped["csf"] - warped["gm"] - warped["dgm"] - warped["plexus"], 0.0, 1.0)
    for key, val in warped.items():
        tissues[key][sl] = val

    d1 = smooth_noise(rng, box, max(0.35 * r_c, 0.8))
    d2 = smooth_noise(rng, box, max(0.4 * r_wt, 1.0))
    d5 = smooth_noise(rng, box, max(0.14 * r_wt, 0.8))
    d3 = smooth_noise(rng, box, max(0.25 * r_c, 0.7))
    d4 = smooth_noise(rng, box, max(0.18 * r_c, 0.7))
    texture = smooth_noise(rng, box, max(2.5 / h, 0.7))

    x_mm = (px + np.float32(c_vox[0] + fr.crop[0].start - fr.centre[0])) * np.float32(h)
    hemi = soft_edge(np.sign(c_mm[0]) * x_mm - 1.5, 0.8)  # the falx stops the tumour at the midline
    in_brain = tissues["brain"][sl] > 0.5
    g_c = r / np.float32(r_c) + np.float32(rng.uniform(0.08, 0.18)) * d1 + np.float32(0.05) * d5
    core = (g_c < 1.0) & (hemi > 0.5) & in_brain
    if rng.random() < 0.75:  # necrotic centre, enhancing rim
        fn = rng.uniform(0.45, 0.72)
        rim = max(rng.uniform(0.14, 0.3), 1.3 / r_c)
        nec = core & (g_c + 0.1 * d3 < fn)
        enh = core & ~nec & (g_c + 0.12 * d4 < fn + rim)
    else:  # solid tumour with patchy enhancement
        nec = np.zeros(box, bool)
        enh = core & (d4 > rng.uniform(0.1, 0.6))
    net = core & ~nec & ~enh

    g_e = r / np.float32(r_wt) + np.float32(rng.uniform(0.1, 0.25)) * d2 + np.float32(0.1) * d5
    pref = warped["wm"] + 0.8 * warped["dgm"] + 0.55 * warped["gm"]  # edema follows white matter
    edema_frac = sigmoid((1.0 - g_e) / 0.12) * pref * hemi
    edema = (edema_frac > 0.5) & ~core & in_brain

    seg_box = np.zeros(box, np.uint8)
    seg_box[edema] = 2
    seg_box[net | nec] = 1
    seg_box[enh] = 4
    seg = np.zeros(fr.cshape, np.uint8)
    seg[sl] = seg_box
    # partial volumes: the labels blurred over about 1.5 mm; the edema signal follows its label
    # (blurred together with the core, so that no normal-looking rim separates them)
    blur = max(1.5 / h, 0.5)
    soft = {
        "nec": ndimage.gaussian_filter(nec.astype(np.float32), blur, truncate=3.0),
        "enh": ndimage.gaussian_filter(enh.astype(np.float32), blur, truncate=3.0),
        "net": ndimage.gaussian_filter(net.astype(np.float32), blur, truncate=3.0),
        "edema": ndimage.gaussian_filter((edema | core).astype(np.float32), 1.3 * blur, truncate=3.0)
        * (0.75 + 0.25 * np.clip(edema_frac, 0.0, 1.0)),
        "texture": texture,
    }
    return seg, sl, soft
