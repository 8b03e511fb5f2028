"""Whole-volume inference: every axial slice of a case through a fully convolutional net.

Also the two ways a class map is decided from class probabilities (:func:`decide`): the papers'
argmax, and the region thresholds of region-based models (nnU-Net's BraTS setting, Isensee et al.
2021), whose nested sigmoid outputs become class probabilities through :func:`region_chain`; and
2.5D context (:func:`with_context`): each slice with its neighbours as extra channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from brats_lightning.data.labels import LabelConvention

__all__ = [
    "DECISIONS",
    "FLIPS",
    "InputPadding",
    "decide",
    "flip_average",
    "predict_padded",
    "predict_volume",
    "region_chain",
    "region_classes",
    "tta_flips",
    "with_context",
]

#: how a class map is decided from class probabilities: ``argmax`` (the papers) or ``regions``
DECISIONS: tuple[str, ...] = ("argmax", "regions")


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


def region_classes(convention: LabelConvention) -> tuple[int, int, int]:
    """The internal classes ``(edema, necrosis, enhancing)`` of a convention whose regions nest one class deep.

    Whole tumour = edema + core, core = necrosis + enhancing (BraTS 2017+; BRATS 2013's two core
    classes, necrosis and non-enhancing tumour, cannot be told apart by regions).

    Raises:
        ValueError: the convention has another structure.
    """
    wt, tc, et = (set(convention.region_classes(r)) for r in ("wt", "tc", "et"))
    edema, necrosis = wt - tc, tc - et
    if len(edema) != 1 or len(necrosis) != 1 or len(et) != 1 or convention.num_classes != 4:
        raise ValueError(
            f"region-based outputs need a convention with one class per region level (background, edema, "
            f"necrosis, enhancing); {convention.name} has {convention.num_classes} classes"
        )
    return edema.pop(), necrosis.pop(), et.pop()


def region_chain(logits: torch.Tensor, convention: LabelConvention) -> torch.Tensor:
    """Class probabilities ``(N, K, ...)`` of region logits ``(N, 3, ...)``: whole tumour, core given whole
    tumour, enhancing given core (sigmoids chained, so the regions nest by construction).

    ``q_wt = s0``, ``q_tc = q_wt s1``, ``q_et = q_tc s2``; background ``1 - q_wt``, edema ``q_wt - q_tc``,
    necrosis ``q_tc - q_et``, enhancing ``q_et``: a distribution whose region sums are the ``q``.
    """
    edema, necrosis, et = region_classes(convention)
    s = torch.sigmoid(logits.float())
    q_wt = s[:, 0]
    q_tc = q_wt * s[:, 1]
    q_et = q_tc * s[:, 2]
    out = torch.empty((logits.shape[0], 4, *logits.shape[2:]), dtype=s.dtype, device=s.device)
    out[:, 0], out[:, edema], out[:, necrosis], out[:, et] = 1 - q_wt, q_wt - q_tc, q_tc - q_et, q_et
    return out


def decide(probs: torch.Tensor, convention: LabelConvention, rule: str = "argmax") -> torch.Tensor:
    """The class map of class probabilities ``(N, K, ...)`` (classes on dim 1).

    ``argmax``: the most probable class (the papers). ``regions``: the region probabilities (sums of
    class probabilities) thresholded at 0.5 from the innermost out: enhancing where ``q_et > 0.5``,
    else necrosis where ``q_tc > 0.5``, else edema where ``q_wt > 0.5`` (nnU-Net's BraTS rule).
    """
    if rule == "argmax":
        return probs.argmax(1)
    if rule != "regions":
        raise ValueError(f"unknown decision rule {rule!r}; expected one of {list(DECISIONS)}")
    edema, necrosis, et = region_classes(convention)
    q_et = probs[:, et]
    q_tc = probs[:, necrosis] + q_et
    q_wt = 1 - probs[:, 0]
    out = torch.zeros(q_wt.shape, dtype=torch.long, device=probs.device)
    out = torch.where(q_wt > 0.5, edema, out)
    out = torch.where(q_tc > 0.5, necrosis, out)
    return torch.where(q_et > 0.5, et, out)


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
