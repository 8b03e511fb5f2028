"""How a class map is decided from class probabilities (:func:`decide`).

Two rules: the papers' argmax, and the region thresholds of region-based models (nnU-Net's BraTS setting,
Isensee et al. 2021), whose nested sigmoid outputs become class probabilities through :func:`region_chain`.
"""

from __future__ import annotations

import torch

from brats_lightning.data.labels import LabelConvention

__all__ = ["DECISIONS", "check_et_threshold", "decide", "region_chain", "region_classes", "region_levels"]

#: how a class map is decided from class probabilities: ``argmax`` (the papers) or ``regions``
DECISIONS: tuple[str, ...] = ("argmax", "regions")


def region_levels(convention: LabelConvention) -> tuple[int, int, int]:
    """The internal classes ``(edema, necrosis, enhancing)`` of a convention whose regions nest one class deep.

    Whole tumour = edema + core, core = necrosis + enhancing (BraTS 2017+, MSD, BraTS 2024 whose resection
    cavity lies outside the whole tumour; BRATS 2013's two core classes, necrosis and non-enhancing tumour, cannot
    be told apart by regions).

    Raises:
        ValueError: the convention has another structure.
    """
    wt, tc, et = (set(convention.region_classes(r)) for r in ("wt", "tc", "et"))
    edema, necrosis = wt - tc, tc - et
    if len(edema) != 1 or len(necrosis) != 1 or len(et) != 1:
        raise ValueError(
            f"the regions of {convention.name} do not nest one class deep (background, edema, necrosis, enhancing)"
        )
    return edema.pop(), necrosis.pop(), et.pop()


def region_classes(convention: LabelConvention) -> tuple[int, int, int]:
    """:func:`region_levels` of a convention with no class outside them: what region-based outputs (three nested
    sigmoids) can express.

    Raises:
        ValueError: the convention has another structure, or a class outside the regions (BraTS 2024's cavity).
    """
    try:
        levels = region_levels(convention)
    except ValueError:
        levels = None
    if levels is None or convention.num_classes != 4:
        raise ValueError(
            f"region-based outputs need a convention with one class per region level (background, edema, "
            f"necrosis, enhancing); {convention.name} has {convention.num_classes} classes"
        )
    return levels


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


def check_et_threshold(value: object, source: str) -> float | None:
    """A stored enhancing-tumour threshold: ``None`` or a probability in ``(0, 1)``.

    Raises:
        ValueError: naming ``source`` and the value.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{source}: et_threshold must be a probability in (0, 1) or null, got {value!r}")
    return float(value)


def decide(
    probs: torch.Tensor, convention: LabelConvention, rule: str = "argmax", et_threshold: float | None = None
) -> torch.Tensor:
    """The class map of class probabilities ``(N, K, ...)`` (classes on dim 1).

    ``argmax``: the most probable class (the papers). ``regions``: the region probabilities (sums of
    class probabilities) thresholded at 0.5 from the innermost out: enhancing where ``q_et > 0.5``,
    else necrosis where ``q_tc > 0.5``, else edema where ``q_wt > 0.5`` (nnU-Net's BraTS rule).
    ``et_threshold``: then also enhancing every voxel of the decided tumour whose enhancing probability reaches
    it (a lower bar for the enhancing tumour, chosen out of fold by ``experiment=real_fast``).
    """
    out = _decide(probs, convention, rule)
    if et_threshold is None:
        return out
    edema, necrosis, et = region_levels(convention)
    tumour = (out == edema) | (out == necrosis) | (out == et)
    return torch.where(tumour & (probs[:, et] >= et_threshold), torch.full_like(out, et), out)


def _decide(probs: torch.Tensor, convention: LabelConvention, rule: str) -> torch.Tensor:
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
