"""Label conventions of every BraTS edition, their tumour regions and lossless mappings.

This module is the single owner of label conventions: every other module asks it how file labels
map to the network's internal classes and which classes make up a region. Mixing the conventions
up (label 3 vs 4 for enhancing tumour) is the most reported bug in peer projects.

* ``brats2013`` (BRATS 2012-2016, Menze et al. 2015): 0 background, 1 necrosis, 2 edema,
  3 non-enhancing tumour, 4 enhancing tumour.
* ``brats2017`` (BraTS 2017-2021): 0 background, 1 necrotic / non-enhancing tumour core (NCR/NET),
  2 peritumoral edema, 4 enhancing tumour (label 3 unused).
* ``brats2023`` (BraTS 2023+ tasks with the 2023 labels: adult glioma 2023, meningioma, metastases,
  paediatric, sub-Saharan Africa): 0 background, 1 NCR, 2 edema (SNFH), 3 enhancing tumour.
* ``brats2024`` (BraTS 2024 adult glioma, post-treatment): 0 background, 1 non-enhancing tumour core (NETC),
  2 surrounding FLAIR hyperintensity (SNFH), 3 enhancing tissue (ET), 4 resection cavity (RC). The cavity is
  no tumour region; BraTS 2024 scores it (and NETC, SNFH) on its own beside ET, TC, WT.
* ``msd`` (the Medical Segmentation Decathlon's Task01_BrainTumour, and nnU-Net's BraTS conversions):
  0 background, 1 edema, 2 non-enhancing tumour (necrosis included), 3 enhancing tumour.

``brats2024`` and ``msd`` reuse the values of other conventions with other meanings (3 is enhancing in 2024,
non-enhancing in 2013; 1 is edema in MSD), so they are never guessed from a file's values: a layout's
``dataset.json`` or ``data.convention`` declares them.

Internal classes are ``0..K-1``: class ``i`` is the ``i``-th file label of the convention.
Regions (Menze et al. 2015; both papers' evaluation): whole tumour (``wt``, "complete") = every
tumour label; tumour core (``tc``) = all but edema; enhancing tumour (``et``). A convention may score
more regions (:attr:`LabelConvention.scored_regions`: BraTS 2024's NETC, SNFH and RC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import torch

from brats_lightning.errors import DataError

__all__ = [
    "REGIONS",
    "REGION_NAMES",
    "REGION_TITLES",
    "LabelConvention",
    "CONVENTIONS",
    "get_convention",
    "detect_convention",
    "fitting_conventions",
    "resolve_convention",
    "same_scores",
    "AmbiguousConventionError",
    "UnknownLabelError",
    "convert",
    "convention_of_tissues",
    "tissue_of",
]

#: Region keys in the order every table and metric name uses.
REGIONS: tuple[str, ...] = ("wt", "tc", "et")
#: Human-readable region names.
REGION_NAMES: dict[str, str] = {"wt": "whole tumour", "tc": "tumour core", "et": "enhancing tumour"}
#: The papers' names of the regions (table headings: "Dice Complete", "Complete (WT)").
REGION_TITLES: dict[str, str] = {"wt": "Complete", "tc": "Core", "et": "Enhancing"}
#: Regions some conventions score beyond the three (BraTS 2024): key -> name.
EXTRA_REGION_NAMES: dict[str, str] = {
    "netc": "non-enhancing tumour core",
    "snfh": "surrounding FLAIR hyperintensity",
    "rc": "resection cavity",
}

# Colours of the papers' figures: necrosis red, edema green, non-enhancing blue, enhancing yellow.
_COLOURS = {
    "necrosis": (0.90, 0.10, 0.10),
    "NCR/NET": (0.90, 0.10, 0.10),
    "NCR": (0.90, 0.10, 0.10),
    "edema": (0.10, 0.80, 0.20),
    "non-enhancing": (0.15, 0.35, 0.95),
    "enhancing": (1.00, 0.90, 0.10),
    "NETC": (0.90, 0.10, 0.10),
    "SNFH": (0.10, 0.80, 0.20),
    "RC": (0.55, 0.35, 0.85),
}


class UnknownLabelError(DataError):
    """A label volume holds values that its declared convention does not have."""


@dataclass(frozen=True)
class LabelConvention:
    """One BraTS label convention.

    Attributes:
        name: convention key (``brats2013``, ``brats2017``, ``brats2023``, ``brats2024``, ``msd``).
        labels: file label values; internal class ``i`` is ``labels[i]``.
        names: a name per label.
        regions: region key -> file label values belonging to it: ``wt``, ``tc``, ``et``, and any more it scores.
        detectable: whether a file's label values may reveal it (``False``: only a declaration does, since its
            values mean something else in another convention).
    """

    name: str
    labels: tuple[int, ...]
    names: tuple[str, ...]
    regions: dict[str, tuple[int, ...]] = field(hash=False)
    detectable: bool = True

    @property
    def scored_regions(self) -> tuple[str, ...]:
        """The regions ``evaluate`` scores: whole tumour, core and enhancing, then the convention's own."""
        return (*REGIONS, *(r for r in self.regions if r not in REGIONS))

    @property
    def num_classes(self) -> int:
        """Number of internal classes (background included)."""
        return len(self.labels)

    def region_classes(self, region: str) -> tuple[int, ...]:
        """Internal classes that make up ``region``."""
        if region not in self.regions:
            raise KeyError(f"unknown region {region!r}; expected one of {REGIONS}")
        return tuple(self.labels.index(v) for v in self.regions[region])

    @property
    def colours(self) -> list[tuple[float, float, float]]:
        """An RGB colour per internal class (background black), as in the papers' figures."""
        return [(0.0, 0.0, 0.0)] + [_COLOURS[n] for n in self.names[1:]]

    def _lut(self) -> np.ndarray:
        lut = np.full(max(self.labels) + 1, 255, dtype=np.uint8)
        for i, v in enumerate(self.labels):
            lut[v] = i
        return lut

    def check(self, labels: np.ndarray, source: str = "<array>") -> None:
        """Raise :class:`UnknownLabelError` if ``labels`` holds values outside the convention.

        Args:
            labels: label array (any integer or integral float dtype).
            source: file name or description used in the error message.
        """
        values = np.unique(labels)
        bad = [v for v in values.tolist() if v not in self.labels]
        if bad:
            raise UnknownLabelError(
                f"{source}: label values {_fmt(bad)} are not in the {self.name} convention "
                f"(allowed {list(self.labels)}; found {_fmt(values.tolist())}). "
                f"Declare the right convention (data.convention=...) instead of remapping."
            )

    def to_internal(self, labels: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Map file labels to internal classes ``0..K-1`` (uint8); unknown values are an error."""
        arr = np.asarray(labels)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise UnknownLabelError(f"{source}: label volume holds non-integer or non-finite values")
            arr = arr.astype(np.int64)
        self.check(arr, source)
        return self._lut()[arr]

    def from_internal(self, classes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Map internal classes back to file labels (uint8), the inverse of :meth:`to_internal`."""
        arr = classes.cpu().numpy() if isinstance(classes, torch.Tensor) else np.asarray(classes)
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_classes):
            raise ValueError(f"internal classes must be in 0..{self.num_classes - 1}, got {arr.min()}..{arr.max()}")
        return np.asarray(self.labels, dtype=np.uint8)[arr]

    @overload
    def region_masks(self, classes: torch.Tensor, regions: Sequence[str] = ...) -> dict[str, torch.Tensor]: ...

    @overload
    def region_masks(self, classes: np.ndarray, regions: Sequence[str] = ...) -> dict[str, np.ndarray]: ...

    def region_masks(
        self, classes: np.ndarray | torch.Tensor, regions: Sequence[str] = REGIONS
    ) -> dict[str, np.ndarray] | dict[str, torch.Tensor]:
        """Boolean masks of ``regions`` (the three by default; :attr:`scored_regions` for all the convention
        scores) from an internal class map (numpy or torch, any shape)."""
        if isinstance(classes, torch.Tensor):
            return {
                r: torch.isin(classes, torch.tensor(self.region_classes(r), device=classes.device)) for r in regions
            }
        return {r: np.isin(classes, self.region_classes(r)) for r in regions}


def _fmt(values: list) -> str:
    return "[" + ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in values) + "]"


CONVENTIONS: dict[str, LabelConvention] = {
    "brats2013": LabelConvention(
        "brats2013",
        (0, 1, 2, 3, 4),
        ("background", "necrosis", "edema", "non-enhancing", "enhancing"),
        {"wt": (1, 2, 3, 4), "tc": (1, 3, 4), "et": (4,)},
    ),
    "brats2017": LabelConvention(
        "brats2017",
        (0, 1, 2, 4),
        ("background", "NCR/NET", "edema", "enhancing"),
        {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)},
    ),
    "brats2023": LabelConvention(
        "brats2023",
        (0, 1, 2, 3),
        ("background", "NCR", "edema", "enhancing"),
        {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)},
    ),
    "brats2024": LabelConvention(
        "brats2024",
        (0, 1, 2, 3, 4),
        ("background", "NETC", "SNFH", "enhancing", "RC"),
        {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,), "netc": (1,), "snfh": (2,), "rc": (4,)},
        detectable=False,
    ),
    "msd": LabelConvention(
        "msd",
        (0, 1, 2, 3),
        ("background", "edema", "non-enhancing", "enhancing"),
        {"wt": (1, 2, 3), "tc": (2, 3), "et": (3,)},
        detectable=False,
    ),
}

_ALIASES = {
    "brats2012": "brats2013",
    "brats2014": "brats2013",
    "brats2015": "brats2013",
    "brats2016": "brats2013",
    "brats2018": "brats2017",
    "brats2019": "brats2017",
    "brats2020": "brats2017",
    "brats2021": "brats2017",
    "brats2024gli": "brats2024",
    "brats2024men": "brats2023",
    "brats2024met": "brats2023",
    "brats2024ped": "brats2023",
    "brats2024ssa": "brats2023",
    "decathlon": "msd",
    "nnunet": "msd",
}


def get_convention(name: str | LabelConvention) -> LabelConvention:
    """Look a convention up by name (edition years are accepted as aliases, e.g. ``brats2018``)."""
    if isinstance(name, LabelConvention):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in CONVENTIONS:
        raise KeyError(f"unknown label convention {name!r}; expected one of {sorted(CONVENTIONS)} or an edition year")
    return CONVENTIONS[key]


class AmbiguousConventionError(DataError):
    """A label file fits several conventions that would score it differently, and nothing decides."""


def fitting_conventions(values: set[int] | list[int] | np.ndarray) -> list[LabelConvention]:
    """The detectable conventions whose labels include every value of a label volume (2013, 2017, 2023 order)."""
    vals = {int(v) for v in np.unique(np.asarray(values)).tolist()}
    return [c for c in CONVENTIONS.values() if c.detectable and vals <= set(c.labels)]


def same_scores(values: set[int] | list[int] | np.ndarray, conventions: list[LabelConvention]) -> bool:
    """Whether every convention of ``conventions`` puts the present ``values`` in the same regions.

    Then the choice between them cannot change a score: e.g. ``{0, 1, 2}`` (no enhancing tumour in any
    convention) or ``{0, 1, 2, 4}`` under 2013 and 2017. Label 3 without 4 is the case that matters:
    non-enhancing tumour (core) in 2013, enhancing tumour in 2023.
    """
    vals = {int(v) for v in np.unique(np.asarray(values)).tolist()} - {0}
    membership = {tuple(sorted((r, v) for r in REGIONS for v in vals if v in c.regions[r])) for c in conventions}
    return len(membership) <= 1


def resolve_convention(
    values: set[int] | list[int] | np.ndarray,
    source: str,
    candidates: Sequence[str | LabelConvention] | str | None = None,
    folder_has_3_and_4: bool | None = None,
    task: str | LabelConvention | None = None,
) -> LabelConvention:
    """The convention of a label volume, never a silent guess.

    Args:
        values: the labels present in the file.
        source: the file (for messages).
        candidates: the convention given (a name), the allowed ones (a list), or ``None`` for all three.
        folder_has_3_and_4: whether another file of the same folder holds both labels 3 and 4 (which
            only the 2013 convention has: the folder is then 2013); ``None`` when not known.
        task: the convention of the ground truth a prediction is scored against: a 2017 or 2023
            ground truth has four classes, so its predictions cannot use 2013's fifth class.

    Returns:
        The only fitting candidate; else any of them when they score the file alike; else the one
        the folder or the task proves.

    Raises:
        UnknownLabelError: values that no candidate has.
        AmbiguousConventionError: several candidates score the file differently and nothing decides;
            the message names the file and the candidates.
    """
    vals = sorted({int(v) for v in np.unique(np.asarray(values)).tolist()})
    if isinstance(candidates, (str, LabelConvention)):
        conv = get_convention(candidates)
        conv.check(np.asarray(vals), source)
        return conv
    allowed = (
        [get_convention(c) for c in candidates] if candidates else [c for c in CONVENTIONS.values() if c.detectable]
    )
    fit = [c for c in allowed if set(vals) <= set(c.labels)]
    if not fit:
        names = [c.name for c in allowed]
        raise UnknownLabelError(f"{source}: label values {vals} fit no convention of {names}")
    if len(fit) == 1 or same_scores(vals, fit):
        return fit[0] if len(fit) == 1 else next((c for c in fit if c.name != "brats2013"), fit[0])
    fit_names = {c.name for c in fit}
    if folder_has_3_and_4 and "brats2013" in fit_names:
        return CONVENTIONS["brats2013"]
    if task is not None:
        task_conv = get_convention(task)
        same_task = [c for c in fit if (c.name == "brats2013") == (task_conv.name == "brats2013")]
        if len(same_task) == 1:
            return same_task[0]
    raise AmbiguousConventionError(
        f"{source}: labels {vals} fit the conventions {sorted(fit_names)}, which score it differently (label 3 is "
        "non-enhancing tumour in brats2013, enhancing tumour in brats2023), and nothing in the folder decides; "
        "give the convention (gt_convention=... / pred_convention=...)"
    )


def detect_convention(values: set[int] | list[int] | np.ndarray, source: str = "<array>") -> LabelConvention:
    """The convention of a label volume when its labels decide it (see :func:`resolve_convention`).

    Raises:
        UnknownLabelError: values that no convention has (e.g. 5, or negative values).
        AmbiguousConventionError: label 3 without 4 (2013 or 2023).
    """
    return resolve_convention(values, source)


# Tissue of each internal class, to translate between conventions. 2013's necrosis and
# non-enhancing tumour both became 2017's NCR/NET (and 2023's NCR).
_TISSUE = {
    "brats2013": ("background", "core", "edema", "core", "enhancing"),
    "brats2017": ("background", "core", "edema", "enhancing"),
    "brats2023": ("background", "core", "edema", "enhancing"),
    "brats2024": ("background", "core", "edema", "enhancing", "cavity"),
    "msd": ("background", "edema", "core", "enhancing"),
}


def tissue_of(name: str) -> str | None:
    """The tissue a label's name says (``edema``, ``core``, ``enhancing``, ``cavity``, ``background``), e.g. a
    ``dataset.json``'s ``"non-enhancing tumor"`` -> ``core``; ``None`` when the name says none of them."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    if key in ("background", "bg", "0"):
        return "background"
    if "cavity" in key or key == "rc":
        return "cavity"
    if any(w in key for w in ("edema", "oedema", "snfh", "hyperintens", "peritumoral")):
        return "edema"
    if "enhanc" in key and not key.startswith("non") and "nonenh" not in key:
        return "enhancing"
    if any(w in key for w in ("nonenh", "necro", "netc", "ncr", "net", "core")):
        return "core"
    return None


def convention_of_tissues(tissues: dict[int, str]) -> LabelConvention | None:
    """The convention whose labels carry exactly these tissues (label value -> tissue; background may be left out):
    how a ``dataset.json``'s label names are matched to a convention. ``None`` when none does."""
    wanted = {v: t for v, t in tissues.items() if v != 0}
    for conv in CONVENTIONS.values():
        if conv.name == "brats2013":  # its two core classes are told apart by no name we read
            continue
        have = {v: _TISSUE[conv.name][i] for i, v in enumerate(conv.labels) if v != 0}
        if have == wanted:
            return conv
    return None


def convert(classes: np.ndarray, src: str | LabelConvention, dst: str | LabelConvention) -> np.ndarray:
    """Translate internal classes from one convention to another; the three regions are preserved.

    2017 <-> 2023 <-> MSD is lossless. 2013 -> the others merges necrosis and non-enhancing tumour into
    NCR/NET; the way back cannot split them and writes necrosis (label 1). 2024's resection cavity is no tumour:
    background in a convention without it.
    """
    s, d = get_convention(src), get_convention(dst)
    if s.name == d.name:
        return np.asarray(classes)
    target = {t: _TISSUE[d.name].index(t) for t in set(_TISSUE[d.name])}
    target.setdefault("cavity", 0)
    lut = np.array([target[t] for t in _TISSUE[s.name]], dtype=np.uint8)
    return lut[np.asarray(classes)]
