"""The synthetic BraTS-like phantom: multimodal MRI cases as arrays (files: :mod:`~brats_lightning.data.synthetic`).

Each case is a skull-stripped brain in four co-registered modalities (FLAIR, T1, T1c, T2) with a
BraTS 2017-2021 label map (0 background, 1 NCR/NET, 2 edema, 4 enhancing tumour).

Model of the anatomy. Sizes are physical: the array is taken to span a field of view of about
200 x 240 x 160 mm, which gives a nominal isotropic voxel size ``h`` (2.5 mm for the default
``(80, 96, 64)``, about 1 mm for ``(240, 240, 155)``, 4.5 mm for ``(48, 56, 32)``), and an adult
brain (about 140 x 170 x 130 mm, varying per case) is drawn in it, shrunk where the array is too
small, so the anatomy scales with the shape without being distorted.

* Frame: array axis 0 is left-right, axis 1 anterior-posterior, axis 2 inferior-superior, in the
  BraTS LPS orientation (index 0 = right, anterior, inferior). The healthy brain is built centred
  on the array and exactly mirror symmetric about the mid-sagittal plane: every field of the
  healthy anatomy is a function of ``|x|`` or a random field with mirrored lattice values. The
  finished case is then translated by a couple of voxels (no rotation).
* Cerebrum: a super-ellipsoid (rounded-square axial outline, wider posteriorly, with a higher
  frontal floor), bumped by a smooth symmetric noise; from below, the posterior fossa (cerebellum
  and brainstem, with a thin CSF gap for the tentorium) and the basal cisterns between the
  temporal lobes are carved out of it.
* Cortex: sulci are the zero set of a smooth noise sampled on the radial projection of each voxel
  onto the outer surface, bent with depth by another smooth field, so they run inwards to a
  varying depth (about 2 cm). The CSF spaces are a thin subarachnoid layer, the sulci, the
  interhemispheric fissure (a mid-sagittal sheet that stops on the corpus callosum) and the
  Sylvian fissures (insular cistern and its stem); grey matter is everything within a cortical
  thickness (about 3 mm) of a CSF space, white matter lies beneath.
* Deep structures: butterfly-shaped lateral ventricles (frontal horns against the septum, bodies,
  atria with choroid plexus, occipital horns), third and fourth ventricles, caudate heads,
  lentiform nuclei and thalami (deep grey matter). The ventricles and the sulcal widths grow with
  a per-case atrophy factor. Cerebellum: folia (fine grey/white layers) around a white core, with
  a vermis; the brainstem is mostly white matter.
* Tumour, in one hemisphere at a random place and size (whole tumour from a few % to about 15 % of
  the brain): randomly deformed spheres give the core and the edema extent; the core holds a
  necrotic centre (absent in about a quarter of the cases) inside an irregular enhancing rim, and
  non-enhancing tumour around it or, without necrosis, beside patchy enhancement; the edema
  follows the white matter (finger-like, mostly sparing the cortex, never in CSF) and stops at
  the falx. A radial, compactly supported displacement pushes the healthy tissue away from the
  tumour (mass effect: compressed ventricle, effaced sulci).
* Image formation: each voxel mixes the tissue fractions (soft edges give partial volumes) with
  per-modality tissue intensities following real contrasts (T1: WM > GM > CSF; T2: CSF > GM > WM;
  FLAIR: CSF suppressed, GM slightly above WM, edema bright; T1c: as T1 plus enhancing rim and
  choroid plexus bright, necrosis dark), times a small texture, a per-modality smooth
  multiplicative bias field (about +-10-20 %), a random global gain, Rician noise, a light
  Gaussian blur, skull stripping (exactly 0 outside the brain) and rounding to int16.

Example:
    >>> from brats_lightning.data.synthetic.phantom import generate_case
    >>> case = generate_case(seed=0, shape=(48, 56, 32))
    >>> sorted(case)
    ['flair', 'seg', 't1', 't1ce', 't2']

Generation is vectorised (NumPy/SciPy, no per-voxel loop): about 0.3 s per case at the default
shape on a 2-core CPU, about 5 s at ``(240, 240, 155)``. The same seed and arguments give
byte-identical arrays on a given machine (and thread count does not matter).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "MODALITIES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "CASE_PREFIX",
    "TISSUE_NAMES",
    "case_seed",
    "case_id",
    "brats_affine",
    "generate_case",
]

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""Image keys, in the BraTS file-name spelling."""
DEFAULT_SHAPE: tuple[int, int, int] = (80, 96, 64)
DEFAULT_SPACING: float = 2.5
CASE_PREFIX: str = "Synth_"
TISSUE_NAMES: tuple[str, ...] = ("background", "csf", "gm", "wm", "deep_gm", "choroid_plexus")
"""Codes of the optional ``tissue`` map of :func:`generate_case` (index = code)."""

# Tissue intensities relative to white matter, per modality (flair, t1, t1ce, t2).
_LEVELS: dict[str, tuple[float, float, float, float]] = {
    "csf": (0.20, 0.30, 0.30, 3.40),
    "gm": (1.50, 0.72, 0.74, 1.40),
    "dgm": (1.10, 0.80, 0.82, 1.25),
    "wm": (1.00, 1.00, 1.00, 1.00),
    "plexus": (0.90, 0.75, 1.70, 1.60),
    "edema": (2.00, 0.72, 0.74, 2.30),
    "net": (1.75, 0.66, 0.70, 2.00),
    "necrosis": (1.15, 0.35, 0.33, 3.00),
    "enhancing": (1.55, 0.85, 1.90, 1.60),
}
# White-matter intensity of each modality (int16 units), before the per-case gain.
_BASE: tuple[float, float, float, float] = (420.0, 750.0, 820.0, 520.0)
_TEXTURE: tuple[float, float, float, float] = (0.035, 0.03, 0.03, 0.04)
_NOISE: tuple[float, float, float, float] = (0.045, 0.04, 0.04, 0.05)

# Lateral ventricle, one side, as profiles along the normalised antero-posterior coordinate v:
# medial and lateral walls (normalised |u|) and floor and roof (normalised w).
_VENT_V = (-0.42, -0.36, -0.26, -0.12, 0.02, 0.14, 0.24, 0.32, 0.42, 0.52, 0.60)
_VENT_MEDIAL = (0.02, 0.015, 0.015, 0.015, 0.015, 0.02, 0.05, 0.11, 0.16, 0.19, 0.21)
_VENT_LATERAL = (0.05, 0.15, 0.19, 0.16, 0.15, 0.17, 0.24, 0.31, 0.30, 0.26, 0.22)
_VENT_FLOOR = (-0.08, -0.14, -0.18, -0.10, -0.02, -0.02, -0.10, -0.14, -0.10, -0.06, -0.04)
_VENT_ROOF = (-0.02, 0.06, 0.13, 0.18, 0.20, 0.20, 0.17, 0.10, 0.06, 0.03, 0.00)

# Deep grey nuclei: (|u|, v, w) centre and (u, v, w) semi-axes, normalised.
_NUCLEI: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.23, -0.20, -0.04), (0.08, 0.13, 0.16)),  # caudate head
    ((0.47, -0.05, -0.17), (0.10, 0.20, 0.16)),  # lentiform nucleus
    ((0.14, 0.14, -0.16), (0.13, 0.17, 0.15)),  # thalamus
)


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a data set generated with ``seed``.

    Derived from the pair, so that adding cases never changes the earlier ones.

    Args:
        seed: data-set seed.
        index: case number (0-based).

    Returns:
        A 32-bit seed for :func:`generate_case`.
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def case_id(index: int) -> str:
    """BraTS-style case id, e.g. ``Synth_0007``."""
    return f"{CASE_PREFIX}{index:04d}"


def brats_affine(shape: Sequence[int], spacing: float = DEFAULT_SPACING) -> np.ndarray:
    """Voxel-to-world affine of a BraTS volume (LPS array orientation, RAS world).

    Args:
        shape: array shape ``(X, Y, Z)``.
        spacing: isotropic voxel size in mm.

    Returns:
        A 4x4 float64 affine, ``diag(-s, -s, s, 1)`` with the y translation ``(Y - 1) * s``.
    """
    s = float(spacing)
    aff = np.diag([-s, -s, s, 1.0])
    aff[1, 3] = (int(shape[1]) - 1) * s
    return aff


# --------------------------------------------------------------------------------------------
# random fields
# --------------------------------------------------------------------------------------------


def _kernel_matrix(n: int, sigma: float) -> np.ndarray:
    """Gaussian weights (rows of unit norm) of a lattice of nodes symmetric about the axis centre."""
    step = 0.8 * sigma
    k = int(np.ceil(((n - 1) / 2 + 2.5 * sigma) / step))
    nodes = (n - 1) / 2 + step * np.arange(-k, k + 1)
    pos = np.arange(n, dtype=np.float64)
    mat = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / sigma) ** 2)
    mat /= np.sqrt((mat * mat).sum(axis=1, keepdims=True))
    return mat.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float, mirror: bool = False) -> np.ndarray:
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


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function (float32, via tanh, which is faster than ``expit``)."""
    x = np.asarray(x, dtype=np.float32)
    return (np.tanh(x * np.float32(0.5)) * np.float32(0.5) + np.float32(0.5)).astype(np.float32, copy=False)


def _soft(dist_mm: np.ndarray | float, sigma_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (positive inside), in mm."""
    return _sigmoid(np.asarray(dist_mm, dtype=np.float32) * np.float32(1.0 / sigma_mm))


def _box_dist(coord: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Distance outside the interval ``[lo, hi]`` (0 inside)."""
    return np.maximum(np.maximum(np.float32(lo) - coord, coord - np.float32(hi)), np.float32(0.0))


# --------------------------------------------------------------------------------------------
# healthy anatomy
# --------------------------------------------------------------------------------------------


class _Frame:
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


def _brain_radius(fr: _Frame, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
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


def _hindbrain(fr: _Frame, ax: np.ndarray) -> dict[str, np.ndarray]:
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


def _healthy(fr: _Frame, rng: np.random.Generator) -> dict[str, np.ndarray]:
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
    rho0 = _brain_radius(fr, x, y, z)
    rho = rho0 * (1.0 + 0.02 * _smooth_noise(rng, shape, 16.0 / h, mirror=True))
    r_mm = np.sqrt(x * x + y * y + z * z)
    depth_o = r_mm * (1.0 / np.maximum(rho, 1e-3) - 1.0)  # along the ray from the centre, mm
    del r_mm, rho
    hind = _hindbrain(fr, ax)
    tent = 0.8 + w_surf  # tentorium and cisterns between cerebrum and hindbrain, mm
    depth = np.minimum(depth_o, -hind["cb"] - np.float32(tent))
    depth = np.minimum(depth, hind["slot"])
    brain = _soft(np.maximum(depth + np.float32(tent), np.maximum(hind["cb"], hind["bs"])), pv)
    brain *= _soft(depth_o, pv)

    # a smooth symmetric field: its gradient bends the sulci, it also varies their depth
    sig_w = 8.0 / h
    bend = _smooth_noise(rng, shape, sig_w, mirror=True)
    gx, gy, gz = np.gradient(bend)
    gx *= np.sign(x)  # added to |x| below: must be mirror symmetric
    bend_amp = np.float32(rng.uniform(3.0, 5.0) / h * sig_w * np.sqrt(2.0))
    dfac = np.clip(depth_o * np.float32(1.0 / 12.0), 0.0, 1.6) * bend_amp

    # sulci: zero set of a noise sampled at the (bent) radial projection onto the surface
    sig_s = rng.uniform(2.2, 2.6) / h
    grain = _smooth_noise(rng, shape, sig_s, mirror=True)
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
    var = _smooth_noise(rng, shape, 20.0 / h, mirror=True)
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
    out_w = _box_dist(bz, -0.45 * fr.C, 0.08 * fr.C)
    d_ins = np.sqrt((bx - ins_u) ** 2 + _box_dist(by, -0.32 * fr.B, 0.1 * fr.B) ** 2 + out_w**2)
    stem = by - np.float32(-0.2 * fr.B) - (bx - ins_u) * np.float32(0.35)
    d_stem = np.sqrt(stem * stem + _box_dist(bx, ins_u, 1.3 * fr.A) ** 2 + out_w**2)
    d_syl = np.minimum(d_ins, d_stem)
    del d_ins, d_stem, out_w, bx, by, bz, stem
    w_syl = 0.6 + 1.2 * atrophy

    thick = np.float32(rng.uniform(2.8, 3.4)) * np.clip(1.0 + 0.12 * var, 0.75, 1.25)
    dist = np.minimum(np.minimum(depth - w_surf, d_sulc - w_sulc), np.minimum(d_fis - w_fis, d_syl - w_syl))
    del d_sulc, d_fis, d_syl, var, bend, depth, depth_o
    csf = _soft(-dist, pv)
    not_wm = _soft(thick - dist, pv)
    gm = not_wm - csf
    wm = 1.0 - not_wm
    del dist, not_wm, thick

    # hindbrain: cerebellar cortex as fine folia (shells around the fourth ventricle, so arcs in
    # axial slices) around a white core; brainstem mostly white
    cb, bs = hind["cb"], hind["bs"]
    r4 = np.sqrt(x * x + (y - np.float32(0.3 * fr.B)) ** 2 + (z + np.float32(0.64 * fr.C)) ** 2)
    folia = np.cos(r4 * np.float32(2.0 * np.pi / max(4.5, 2.2 * h)) + 2.0 * grain)
    del r4
    cb_in = _soft(cb - w_surf, pv) * (1.0 - 0.6 * _soft(folia - 0.8, 0.1))  # CSF in the fissures
    cb_wm = np.maximum(_soft(cb - 10.0, 1.5 * pv) * 0.9, 0.45 * np.clip(folia, 0.0, 1.0))
    cb_gm = cb_in * (1.0 - cb_wm)
    p_cb = cb_in
    p_bs = _soft(bs - w_surf, pv) * (1.0 - p_cb)
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
        one = _soft(
            _ellipsoid_depth(bx, by, bz, (cu * fr.A, cv * fr.B, cw * fr.C), (ru * fr.A, rv * fr.B, rw * fr.C)),
            pv,
        )
        nuclei = one if nuclei is None else np.maximum(nuclei, one)
    assert nuclei is not None
    vent, chor = _ventricles(fr, bx, by, bz, atrophy, rng)
    # third ventricle (a midline slit between the thalami) and fourth ventricle
    w3 = 0.5 + 1.3 * atrophy
    out3 = _box_dist(by, -0.08 * fr.B, 0.2 * fr.B) ** 2 + _box_dist(bz, -0.45 * fr.C, -0.08 * fr.C) ** 2
    vent = np.maximum(vent, _soft(w3 - np.sqrt(bx * bx + out3), pv))
    v4 = _ellipsoid_depth(bx, by, bz, (0.0, 0.3 * fr.B, -0.64 * fr.C), (0.07 * fr.A, 0.05 * fr.B, 0.1 * fr.C))
    vent = np.maximum(vent, _soft(v4 + 0.8 * atrophy, pv))
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
    fr: _Frame,
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
    vent = _soft((1.0 - q ** (1.0 / e)) * np.minimum(hu_mm, hw_mm), fr.pv) * valid.reshape(shp)
    q = (
        ((ax - 0.25 * fr.A) / (0.06 * fr.A)) ** 2
        + ((y - 0.34 * fr.B) / (0.08 * fr.B)) ** 2
        + ((z - 0.0 * fr.C) / (0.06 * fr.C)) ** 2
    )
    chor = _soft((1.0 - np.sqrt(q)) * 0.06 * fr.A, fr.pv)
    return vent.astype(np.float32), chor


# --------------------------------------------------------------------------------------------
# tumour
# --------------------------------------------------------------------------------------------


def _place_tumour(
    fr: _Frame, rng: np.random.Generator, r_core_mm: float, r_whole_mm: float
) -> tuple[float, float, float]:
    """Centre (mm) of a tumour (core and whole-tumour radii given), well inside one hemisphere."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    best: tuple[float, float, float] | None = None
    for _ in range(40):
        u, v, w = rng.uniform(0.22, 0.62), rng.uniform(-0.6, 0.55), rng.uniform(-0.2, 0.5)
        c = (side * u * fr.A, v * fr.B, w * fr.C)
        rho = float(_brain_radius(fr, *(np.float32(t) for t in c)))
        depth = float(np.sqrt(c[0] ** 2 + c[1] ** 2 + c[2] ** 2)) * (1.0 / max(rho, 1e-3) - 1.0)
        if best is None:
            best = c
        if depth > 1.1 * r_core_mm + 4.0 and abs(c[0]) > max(0.8 * r_whole_mm, r_core_mm + 4.0):
            return c
    assert best is not None
    return best


def _tumour(
    fr: _Frame, tissues: dict[str, np.ndarray], rng: np.random.Generator
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

    d1 = _smooth_noise(rng, box, max(0.35 * r_c, 0.8))
    d2 = _smooth_noise(rng, box, max(0.4 * r_wt, 1.0))
    d5 = _smooth_noise(rng, box, max(0.14 * r_wt, 0.8))
    d3 = _smooth_noise(rng, box, max(0.25 * r_c, 0.7))
    d4 = _smooth_noise(rng, box, max(0.18 * r_c, 0.7))
    texture = _smooth_noise(rng, box, max(2.5 / h, 0.7))

    x_mm = (px + np.float32(c_vox[0] + fr.crop[0].start - fr.centre[0])) * np.float32(h)
    hemi = _soft(np.sign(c_mm[0]) * x_mm - 1.5, 0.8)  # the falx stops the tumour at the midline
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
    edema_frac = _sigmoid((1.0 - g_e) / 0.12) * pref * hemi
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


# --------------------------------------------------------------------------------------------
# image formation
# --------------------------------------------------------------------------------------------


def _place(crop_arr: np.ndarray, fr: _Frame, offset: Sequence[int]) -> np.ndarray:
    """Put a crop array into a zero volume of the full shape, translated by ``offset`` voxels."""
    out = np.zeros(fr.shape, crop_arr.dtype)
    dst, src = [], []
    for s, n, k, m in zip(fr.crop, fr.shape, offset, crop_arr.shape, strict=True):
        lo, hi = s.start + int(k), s.start + int(k) + m
        dst.append(slice(max(lo, 0), min(hi, n)))
        src.append(slice(max(lo, 0) - lo, m - (hi - min(hi, n))))
    out[tuple(dst)] = crop_arr[tuple(src)]
    return out


def generate_case(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    *,
    tumour: bool = True,
    return_tissues: bool = False,
) -> dict[str, np.ndarray]:
    """Generate one synthetic case.

    Args:
        seed: case seed (see :func:`case_seed` for the seed of case ``i`` of a data set).
        shape: array shape ``(X, Y, Z)`` = (left-right, antero-posterior, inferior-superior).
        tumour: draw a tumour. ``False`` gives the same brain, bias fields and noise without the
            tumour (and its mass effect): a healthy, symmetric brain and an empty label map.
        return_tissues: also return ``tissue``, the dominant healthy tissue of each brain voxel
            (uint8 codes of :data:`TISSUE_NAMES`, after the mass effect), e.g. for tests.

    Returns:
        ``flair``, ``t1``, ``t1ce``, ``t2`` (int16, 0 outside the brain) and ``seg`` (uint8, BraTS
        2017-2021 labels 0/1/2/4), all of ``shape``; plus ``tissue`` when asked.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16, got {shape}")
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    # independent streams: the same seed gives the same brain and scanner with or without tumour
    rng_anat, rng_tum, rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    fr = _Frame(size, rng_anat)
    tissues = _healthy(fr, rng_anat)
    offset = [int(rng_anat.integers(-m, m + 1)) for m in (max(1, round(0.025 * n)) for n in size)]
    sl: tuple[slice, slice, slice] | None = None
    if tumour:
        seg, sl, soft = _tumour(fr, tissues, rng_tum)
    else:
        seg, soft = np.zeros(fr.cshape, np.uint8), {}

    cshape = fr.cshape
    texture = tissues["grain"]
    brain = tissues["brain"]
    mask = brain > 0.5
    sigma_bias = 0.3 * float(np.mean(size))
    out: dict[str, np.ndarray] = {}
    for m, name in enumerate(MODALITIES):
        lev = {k: np.float32(v[m]) for k, v in _LEVELS.items()}
        img = tissues["csf"] * lev["csf"]
        for k in ("gm", "dgm", "wm", "plexus"):
            img += tissues[k] * lev[k]
        img *= 1.0 + np.float32(_TEXTURE[m]) * texture
        if sl is not None:
            tt = 1.0 + np.float32(0.08) * soft["texture"]
            core = np.clip(soft["nec"] + soft["enh"] + soft["net"], 0.0, 1.0)
            eps = soft["edema"]
            sub = img[sl]
            tum = soft["nec"] * lev["necrosis"] + soft["enh"] * lev["enhancing"] + soft["net"] * lev["net"]
            img[sl] = (1.0 - core) * ((1.0 - eps) * sub + eps * lev["edema"] * tt) + tt * tum
        gain = np.float32(_BASE[m] * np.exp(rng.normal(0.0, 0.15)))
        bias = np.exp(np.float32(rng.uniform(0.05, 0.1)) * _smooth_noise(rng, cshape, sigma_bias))
        img *= brain * bias * gain
        sd = np.float32(_NOISE[m]) * gain
        n1 = rng.standard_normal(cshape, dtype=np.float32)
        n1 *= sd
        img += n1
        n2 = rng.standard_normal(cshape, dtype=np.float32)
        n2 *= sd
        img = np.sqrt(img * img + n2 * n2)  # Rician magnitude noise
        img = ndimage.gaussian_filter(img, 0.5, truncate=2.0)
        out[name] = np.where(mask, np.clip(np.rint(img), 1, 32767), 0).astype(np.int16)
    out["seg"] = np.where(mask, seg, 0).astype(np.uint8)
    if return_tissues:
        stack = np.stack([tissues[k] for k in ("csf", "gm", "wm", "dgm", "plexus")])
        out["tissue"] = np.where(mask, np.argmax(stack, axis=0) + 1, 0).astype(np.uint8)
    # a small head translation (no rotation) moves the mid-sagittal plane by a couple of voxels
    return {k: _place(v, fr, offset) for k, v in out.items()}
