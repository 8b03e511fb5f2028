"""The healthy brain of the synthetic phantom: the frame, smooth random fields, the cerebrum with its cortex and
sulci, the posterior fossa, ventricles and deep grey nuclei, as soft tissue fractions (see
:mod:`brats_lightning.data.synthetic.phantom` for the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["Frame", "box_dist", "brain_radius", "healthy", "sigmoid", "smooth_noise", "soft_edge"]

_VENT_V = (-0.42, -0.36, -0.26, -0.12, 0.02, 0.14, 0.24, 0.32, 0.42, 0.52, 0.60)


_VENT_MEDIAL = (0.02, 0.015, 0.015, 0.015, 0.015, 0.02, 0.05, 0.11, 0.16, 0.19, 0.21)


_VENT_LATERAL = (0.05, 0.15, 0.19, 0.16, 0.15, 0.17, 0.24, 0.31, 0.30, 0.26, 0.22)


_VENT_FLOOR = (-0.08, -0.14, -0.18, -0.10, -0.02, -0.02, -0.10, -0.14, -0.10, -0.06, -0.04)


_VENT_ROOF = (-0.02, 0.06, 0.13, 0.18, 0.20, 0.20, 0.17, 0.10, 0.06, 0.03, 0.00)


_NUCLEI: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.23, -0.20, -0.04), (0.08, 0.13, 0.16)),  # caudate head
    ((0.47, -0.05, -0.17), (0.10, 0.20, 0.16)),  # lentiform nucleus
    ((0.14, 0.14, -0.16), (0.13, 0.17, 0.15)),  # thalamus
)


def _kernel_matrix(n: int, sigma: float) -> np.ndarray:
    """Gaussian weights (rows of unit norm) of a lattice of nodes symmetric about the axis centre."""
    step = 0.8 * sigma
    k = int(np.ceil(((n - 1) / 2 + 2.5 * sigma) / step))
    nodes = (n - 1) / 2 + step * np.arange(-k, k + 1)
    pos = np.arange(n, dtype=np.float64)
    mat = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / sigma) ** 2)
    mat /= np.sqrt((mat * mat).sum(axis=1, keepdims=True))
    return mat.astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float, mirror: bool = False) -> np.ndarray:
    """Smooth Gaussian random field of zero mean and (about) unit variance.

    White noise convolved with a Gaussian kernel. Wide kernels use a lattice of nodes 0.8 sigma
    apart and three separable contractions (cheap at any resolution); narrow ones filter
    voxel-wise noise. Results are reproducible bit for bit on a given machine.

    Args:
        rng: random generator.
        shape: output shape.
        sigma: kernel standard deviation in voxels (the field's correlation length).
        mirror: make the field symmetric under a flip of axis 0 (about the array centre).

    Returns:
        float32 array of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    sigma = float(sigma)
    if sigma < 2.6:
        noise = rng.standard_normal(shape, dtype=np.float32)
        if mirror:
            noise = (noise + noise[::-1]) * np.float32(0.5**0.5)
        field = ndimage.gaussian_filter(noise, sigma, mode="mirror", truncate=3.0)
        return field * np.float32(2.0 * np.sqrt(np.pi) * sigma) ** 1.5
    a0, a1, a2 = (_kernel_matrix(n, sigma) for n in shape)
    k0, k1, k2 = a0.shape[1], a1.shape[1], a2.shape[1]
    noise = rng.standard_normal((k0, k1, k2), dtype=np.float32)
    if mirror:
        noise = (noise + noise[::-1]) * np.float32(0.5**0.5)
    if np.prod(shape) < 4_000_000:  # plain loops: small and deterministic
        field = np.einsum("abc,zc->abz", noise, a2)
        field = np.einsum("yb,abz->ayz", a1, field)
        return np.einsum("xa,ayz->xyz", a0, field)
    # large volumes: BLAS (whose results do not depend on the thread count)
    n0, n1, n2 = shape
    field = (noise.reshape(k0 * k1, k2) @ np.ascontiguousarray(a2.T)).reshape(k0, k1, n2)
    field = a1 @ field.transpose(1, 0, 2).reshape(k1, k0 * n2)
    field = np.ascontiguousarray(field.reshape(n1, k0, n2).transpose(1, 0, 2)).reshape(k0, n1 * n2)
    return (a0 @ field).reshape(shape)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function (float32, via tanh, which is faster than ``expit``)."""
    x = np.asarray(x, dtype=np.float32)
    return (np.tanh(x * np.float32(0.5)) * np.float32(0.5) + np.float32(0.5)).astype(np.float32, copy=False)


def soft_edge(dist_mm: np.ndarray | float, sigma_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (positive inside), in mm."""
    return sigmoid(np.asarray(dist_mm, dtype=np.float32) * np.float32(1.0 / sigma_mm))


def box_dist(coord: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Distance outside the interval ``[lo, hi]`` (0 inside)."""
    return np.maximum(np.maximum(np.float32(lo) - coord, coord - np.float32(hi)), np.float32(0.0))


class Frame:
    """Geometry of one case: nominal voxel size, brain semi-axes and a crop around the brain.

    Coordinates ``x, y, z`` are in mm relative to the array centre, over the crop only (the crop
    is symmetric about the centre along axis 0, so mirrored fields stay mirrored).
    """

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        self.shape = shape
        # nominal voxel size: the array spans a 200 x 240 x 160 mm field of view
        self.h = float((200.0 / shape[0] * 240.0 / shape[1] * 160.0 / shape[2]) ** (1.0 / 3.0))
        h = self.h
        self.centre = tuple((n - 1) / 2.0 for n in shape)
        # cerebral semi-axes (mm) of an adult brain, shrunk if the field of view is too small
        scale = rng.uniform(0.93, 1.04)
        self.A = min(70.0, 0.37 * shape[0] * h) * scale * rng.uniform(0.97, 1.03)
        self.B = min(86.0, 0.37 * shape[1] * h) * scale * rng.uniform(0.97, 1.03)
        self.C = min(66.0, 0.41 * shape[2] * h) * scale * rng.uniform(0.97, 1.03)
        self.pv = 0.3 * h  # width of the partial-volume transition at tissue edges, mm
        half = (1.12 * self.A + 2.0 * h, 1.1 * self.B + 2.0 * h, 1.12 * self.C + 2.0 * h)
        crop = []
        for i, n in enumerate(shape):
            lo = max(int(np.floor(self.centre[i] - half[i] / h)), 0)
            hi = n - lo if i == 0 else min(int(np.ceil(self.centre[i] + half[i] / h)) + 1, n)
            crop.append(slice(lo, hi))
        self.crop: tuple[slice, slice, slice] = (crop[0], crop[1], crop[2])
        self.cshape = tuple(s.stop - s.start for s in self.crop)
        axes = [
            (np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)) * np.float32(h)
            for s, c in zip(crop, self.centre, strict=True)
        ]
        self.x = axes[0].reshape(-1, 1, 1)
        self.y = axes[1].reshape(1, -1, 1)
        self.z = axes[2].reshape(1, 1, -1)


def brain_radius(fr: Frame, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Normalised super-ellipsoid radius of the cerebral outline (1 on the surface)."""
    u = np.abs(x) * np.float32(1.0 / fr.A)
    v = y * np.float32(1.0 / fr.B)
    w = z * np.float32(1.0 / fr.C)
    u = u / (1.0 + 0.1 * v)  # wider posteriorly
    # the anterior cranial fossa is higher than the middle one: the frontal lobes stop earlier
    v = v * (1.0 + 0.8 * np.clip(-w - 0.35, 0.0, None) * (v < 0))
    w = w * np.where(w < 0, np.float32(1.06), np.float32(1.0))
    p = 2.25
    uv = (u**p + np.abs(v) ** p) ** (2.0 / p)
    return np.sqrt(uv + w * w).astype(np.float32)


def _ellipsoid_depth(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float], radii: Sequence[float]
) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to an ellipsoid surface (all in mm)."""
    q = np.sqrt(
        ((x - np.float32(centre[0])) / np.float32(radii[0])) ** 2
        + ((y - np.float32(centre[1])) / np.float32(radii[1])) ** 2
        + ((z - np.float32(centre[2])) / np.float32(radii[2])) ** 2
    )
    return (1.0 - q) * np.float32(min(radii))


def _hindbrain(fr: Frame, ax: np.ndarray) -> dict[str, np.ndarray]:
    """Depths (mm, positive inside) of the cerebellum and brainstem; distance outside the slot of the
    basal cisterns (between the temporal lobes, in front of the brainstem)."""
    A, B, C = fr.A, fr.B, fr.C
    y, z = fr.y, fr.z
    # cerebellum: one wide ellipsoid, notched at the back in the midline (vallecula, falx cerebelli)
    cb = _ellipsoid_depth(ax, y, z, (0.0, 0.55 * B, -0.68 * C), (0.72 * A, 0.36 * B, 0.30 * C))
    notch = _ellipsoid_depth(ax, y, z, (0.0, 0.92 * B, -0.74 * C), (0.07 * A, 0.14 * B, 0.22 * C))
    cb = np.minimum(cb, -notch)
    # brainstem: a tube leaning forward, from the midbrain down to the medulla
    yc = (0.08 + 0.07 * np.clip((-0.4 * C - z) / (0.65 * C), 0.0, 1.0)) * B
    q = np.sqrt((ax / np.float32(0.16 * A)) ** 2 + ((y - yc) / np.float32(0.12 * B)) ** 2)
    bs = np.minimum((1.0 - q) * np.float32(min(0.16 * A, 0.12 * B)), np.float32(-0.42 * C) - z)
    bs = np.minimum(bs, z + np.float32(1.08 * C))
    # basal cisterns between the temporal lobes, in front of and around the brainstem
    slot = -_ellipsoid_depth(ax, y, z, (0.0, -0.08 * B, -0.95 * C), (0.22 * A, 0.36 * B, 0.55 * C))
    return {"cb": cb, "bs": bs, "slot": slot}


def healthy(fr: Frame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tissue fractions of the healthy, mirror-symmetric brain, over the crop.

    Returns:
        ``brain`` (fraction of brain in the voxel), ``csf``, ``gm``, ``dgm``, ``wm``, ``plexus``
        (fractions of the brain part, summing to 1) and ``grain`` (a fine symmetric noise, reused
        as tissue texture).
    """
    shape = fr.cshape
    h, pv = fr.h, fr.pv
    x, y, z = fr.x, fr.y, fr.z
    ax = np.abs(x)
    atrophy = rng.uniform(0.0, 1.0)
    w_surf = 0.4 + 0.6 * atrophy  # subarachnoid CSF over the surface, mm

    # outlines: cerebrum (super-ellipsoid minus the hindbrain and the basal cisterns), hindbrain
    rho0 = brain_radius(fr, x, y, z)
    rho = rho0 * (1.0 + 0.02 * smooth_noise(rng, shape, 16.0 / h, mirror=True))
    r_mm = np.sqrt(x * x + y * y + z * z)
    depth_o = r_mm * (1.0 / np.maximum(rho, 1e-3) - 1.0)  # along the ray from the centre, mm
    del r_mm, rho
    hind = _hindbrain(fr, ax)
    tent = 0.8 + w_surf  # tentorium and cisterns between cerebrum and hindbrain, mm
    depth = np.minimum(depth_o, -hind["cb"] - np.float32(tent))
    depth = np.minimum(depth, hind["slot"])
    brain = soft_edge(np.maximum(depth + np.float32(tent), np.maximum(hind["cb"], hind["bs"])), pv)
    brain *= soft_edge(depth_o, pv)

    # a smooth symmetric field: its gradient bends the sulci, it also varies their depth
    sig_w = 8.0 / h
    bend = smooth_noise(rng, shape, sig_w, mirror=True)
    gx, gy, gz = np.gradient(bend)
    gx *= np.sign(x)  # added to |x| below: must be mirror symmetric
    bend_amp = np.float32(rng.uniform(3.0, 5.0) / h * sig_w * np.sqrt(2.0))
    dfac = np.clip(depth_o * np.float32(1.0 / 12.0), 0.0, 1.6) * bend_amp

    # sulci: zero set of a noise sampled at the (bent) radial projection onto the surface
    sig_s = rng.uniform(2.2, 2.6) / h
    grain = smooth_noise(rng, shape, sig_s, mirror=True)
    inv = 1.0 / np.maximum(rho0, 0.05) / np.float32(h)
    lo = [np.float32(c - s.start) for c, s in zip(fr.centre, fr.crop, strict=True)]
    coords = np.empty((3, *shape), np.float32)
    coords[0] = lo[0] + ax * inv + dfac * gx
    coords[1] = lo[1] + y * inv + dfac * gy
    coords[2] = lo[2] + z * inv + dfac * gz
    del inv, dfac
    sulc = ndimage.map_coordinates(grain, coords, order=1, mode="nearest")
    del coords
    s0, s1, s2 = np.gradient(sulc)
    gnorm = np.sqrt(s0 * s0 + s1 * s1 + s2 * s2)
    del s0, s1, s2
    d_sulc = np.abs(sulc) * np.float32(h) / np.maximum(gnorm, np.float32(0.3 / sig_s))
    del sulc, gnorm
    var = smooth_noise(rng, shape, 20.0 / h, mirror=True)
    sulc_depth = np.float32(rng.uniform(17.0, 23.0)) * np.clip(1.0 + 0.2 * var + 0.2 * bend, 0.5, 1.5)
    below = np.maximum(depth_o - sulc_depth, 0.0)
    d_sulc = np.sqrt(d_sulc * d_sulc + below * below)
    del below, sulc_depth
    w_sulc = 0.15 + 0.6 * atrophy  # half width of a sulcus, mm

    # interhemispheric fissure: a mid-sagittal sheet ending on the corpus callosum
    core_v0, core_w0, core_rv, core_rw = 0.0, -0.32, 0.5, 0.58
    qc = np.sqrt(((y / fr.B - core_v0) / core_rv) ** 2 + ((z / fr.C - core_w0) / core_rw) ** 2)
    inside = np.maximum(1.0 - qc, 0.0) * np.float32(min(core_rv * fr.B, core_rw * fr.C))
    d_fis = np.sqrt(x * x + inside * inside)
    del qc, inside
    w_fis = 0.5 + 0.9 * atrophy

    # Sylvian fissures: an insular (sagittal) sheet and an oblique stem to the lateral surface
    bx = ax + 1.2 * bend_amp * h * gx
    by = y + 1.2 * bend_amp * h * gy
    bz = z + 1.2 * bend_amp * h * gz
    del gx, gy, gz
    ins_u = 0.7 * fr.A
    out_w = box_dist(bz, -0.45 * fr.C, 0.08 * fr.C)
    d_ins = np.sqrt((bx - ins_u) ** 2 + box_dist(by, -0.32 * fr.B, 0.1 * fr.B) ** 2 + out_w**2)
    stem = by - np.float32(-0.2 * fr.B) - (bx - ins_u) * np.float32(0.35)
    d_stem = np.sqrt(stem * stem + box_dist(bx, ins_u, 1.3 * fr.A) ** 2 + out_w**2)
    d_syl = np.minimum(d_ins, d_stem)
    del d_ins, d_stem, out_w, bx, by, bz, stem
    w_syl = 0.6 + 1.2 * atrophy

    thick = np.float32(rng.uniform(2.8, 3.4)) * np.clip(1.0 + 0.12 * var, 0.75, 1.25)
    dist = np.minimum(np.minimum(depth - w_surf, d_sulc - w_sulc), np.minimum(d_fis - w_fis, d_syl - w_syl))
    del d_sulc, d_fis, d_syl, var, bend, depth, depth_o
    csf = soft_edge(-dist, pv)
    not_wm = soft_edge(thick - dist, pv)
    gm = not_wm - csf
    wm = 1.0 - not_wm
    del dist, not_wm, thick

    # hindbrain: cerebellar cortex as fine folia (shells around the fourth ventricle, so arcs in
    # axial slices) around a white core; brainstem mostly white
    cb, bs = hind["cb"], hind["bs"]
    r4 = np.sqrt(x * x + (y - np.float32(0.3 * fr.B)) ** 2 + (z + np.float32(0.64 * fr.C)) ** 2)
    folia = np.cos(r4 * np.float32(2.0 * np.pi / max(4.5, 2.2 * h)) + 2.0 * grain)
    del r4
    cb_in = soft_edge(cb - w_surf, pv) * (1.0 - 0.6 * soft_edge(folia - 0.8, 0.1))  # CSF in the fissures
    cb_wm = np.maximum(soft_edge(cb - 10.0, 1.5 * pv) * 0.9, 0.45 * np.clip(folia, 0.0, 1.0))
    cb_gm = cb_in * (1.0 - cb_wm)
    p_cb = cb_in
    p_bs = soft_edge(bs - w_surf, pv) * (1.0 - p_cb)
    rest = np.clip(1.0 - p_cb - p_bs, 0.0, 1.0)
    csf = csf * rest + np.clip(1.0 - rest - cb_gm - cb_wm * cb_in - p_bs, 0.0, 1.0)
    gm = gm * rest + cb_gm + 0.2 * p_bs
    wm = wm * rest + cb_wm * cb_in + 0.8 * p_bs
    del hind, cb, bs, folia, cb_in, cb_wm, cb_gm, p_bs, p_cb, rest
    dgm = np.zeros(shape, np.float32)
    plexus = np.zeros(shape, np.float32)

    # deep structures, on the central block only
    sl = (
        _index_range(x.ravel(), -0.62 * fr.A, 0.62 * fr.A),
        _index_range(y.ravel(), -0.6 * fr.B, 0.75 * fr.B),
        _index_range(z.ravel(), -0.8 * fr.C, 0.4 * fr.C),
    )
    bx, by, bz = ax[sl[0]], y[:, sl[1]], z[:, :, sl[2]]
    nuclei: np.ndarray | None = None
    for (cu, cv, cw), (ru, rv, rw) in _NUCLEI:
        one = soft_edge(
            _ellipsoid_depth(bx, by, bz, (cu * fr.A, cv * fr.B, cw * fr.C), (ru * fr.A, rv * fr.B, rw * fr.C)),
            pv,
        )
        nuclei = one if nuclei is None else np.maximum(nuclei, one)
    assert nuclei is not None
    vent, chor = _ventricles(fr, bx, by, bz, atrophy, rng)
    # third ventricle (a midline slit between the thalami) and fourth ventricle
    w3 = 0.5 + 1.3 * atrophy
    out3 = box_dist(by, -0.08 * fr.B, 0.2 * fr.B) ** 2 + box_dist(bz, -0.45 * fr.C, -0.08 * fr.C) ** 2
    vent = np.maximum(vent, soft_edge(w3 - np.sqrt(bx * bx + out3), pv))
    v4 = _ellipsoid_depth(bx, by, bz, (0.0, 0.3 * fr.B, -0.64 * fr.C), (0.07 * fr.A, 0.05 * fr.B, 0.1 * fr.C))
    vent = np.maximum(vent, soft_edge(v4 + 0.8 * atrophy, pv))
    b_wm = wm[sl]
    b_dgm = nuclei * b_wm
    keep = 1.0 - vent
    plx = chor * vent
    csf[sl] = csf[sl] * keep + vent - plx
    gm[sl] *= keep
    wm[sl] = (b_wm - b_dgm) * keep
    dgm[sl] = b_dgm * keep
    plexus[sl] = plx
    return {"brain": brain, "csf": csf, "gm": gm, "dgm": dgm, "wm": wm, "plexus": plexus, "grain": grain}


def _index_range(coord: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the indices whose coordinate lies in ``[lo, hi]``."""
    idx = np.nonzero((coord >= lo) & (coord <= hi))[0]
    if idx.size == 0:
        return slice(0, 0)
    return slice(int(idx[0]), int(idx[-1]) + 1)


def _ventricles(
    fr: Frame,
    ax: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    atrophy: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Lateral ventricles (both sides, via ``|x|``) and the choroid plexus of the atria.

    Returns:
        The ventricle fraction and the plexus membership (float32, broadcast shape).
    """
    size = 0.75 + 0.6 * atrophy + rng.uniform(-0.1, 0.1)
    v = (y / fr.B).ravel()
    med = np.interp(v, _VENT_V, _VENT_MEDIAL, left=np.nan, right=np.nan)
    lat = np.interp(v, _VENT_V, _VENT_LATERAL, left=np.nan, right=np.nan)
    flo = np.interp(v, _VENT_V, _VENT_FLOOR, left=np.nan, right=np.nan)
    roof = np.interp(v, _VENT_V, _VENT_ROOF, left=np.nan, right=np.nan)
    uc: np.ndarray = (med + lat) / 2.0
    hu = (lat - med) / 2.0
    hu_s = hu * size
    uc = np.where(med < 0.03, uc + (hu_s - hu), uc)  # larger ventricles widen laterally, septum stays
    wc: np.ndarray = (flo + roof) / 2.0
    hw = (roof - flo) / 2.0 * (0.8 + 0.2 * size)
    valid = np.isfinite(uc)
    shp = (1, -1, 1)
    uc = (np.where(valid, uc, 0.0) * fr.A).astype(np.float32).reshape(shp)
    hu_mm = (np.where(valid, hu_s, 1e-3) * fr.A).astype(np.float32).reshape(shp)
    wc = (np.where(valid, wc, 0.0) * fr.C).astype(np.float32).reshape(shp)
    hw_mm = (np.where(valid, hw, 1e-3) * fr.C).astype(np.float32).reshape(shp)
    e = 2.6
    q = np.abs((ax - uc) / hu_mm) ** e + np.abs((z - wc) / hw_mm) ** e
    vent = soft_edge((1.0 - q ** (1.0 / e)) * np.minimum(hu_mm, hw_mm), fr.pv) * valid.reshape(shp)
    q = (
        ((ax - 0.25 * fr.A) / (0.06 * fr.A)) ** 2
        + ((y - 0.34 * fr.B) / (0.08 * fr.B)) ** 2
        + ((z - 0.0 * fr.C) / (0.06 * fr.C)) ** 2
    )
    chor = soft_edge((1.0 - np.sqrt(q)) * 0.06 * fr.A, fr.pv)
    return vent.astype(np.float32), chor
