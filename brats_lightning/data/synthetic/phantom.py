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

Examples:
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

from brats_lightning.data.synthetic.anatomy import Frame, healthy, smooth_noise
from brats_lightning.data.synthetic.tumour import tumour as draw_tumour

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

# Deep grey nuclei: (|u|, v, w) centre and (u, v, w) semi-axes, normalised.


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
# healthy anatomy
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# tumour
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# image formation
# --------------------------------------------------------------------------------------------


def _place(crop_arr: np.ndarray, fr: Frame, offset: Sequence[int]) -> np.ndarray:
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
    fr = Frame(size, rng_anat)
    tissues = healthy(fr, rng_anat)
    offset = [int(rng_anat.integers(-m, m + 1)) for m in (max(1, round(0.025 * n)) for n in size)]
    sl: tuple[slice, slice, slice] | None = None
    if tumour:
        seg, sl, soft = draw_tumour(fr, tissues, rng_tum)
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
        bias = np.exp(np.float32(rng.uniform(0.05, 0.1)) * smooth_noise(rng, cshape, sigma_bias))
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
