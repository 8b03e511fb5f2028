"""The cases to predict: where their outputs go (:class:`CaseOutputs`), and each case read and preprocessed in a
loader worker (:class:`CaseDataset`) exactly as the model's training prepared its cases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import get_layout
from brats_lightning.data.preprocess import (
    PreprocessConfig,
    SymmetryConfig,
    preprocess_case,
)
from brats_lightning.data.readers import CaseFiles
from brats_lightning.errors import UserError

__all__ = ["STAGES", "CaseDataset", "CaseOutputs", "data_configs", "layout_convention"]

#: the stages of a case whose seconds ``predict_report.json`` records
STAGES = ("read", "preprocess", "symmetry", "inference", "write")


@dataclass(frozen=True)
class CaseOutputs:
    """Where the outputs of one case go, and whether they are all there.

    Attributes:
        labels: ``<output_dir>/<case>.nii.gz``.
        probabilities: ``<output_dir>/probabilities/<case>.nii.gz`` when asked for, else ``None``.
        uncertainty: ``<output_dir>/uncertainty/<case>.nii.gz`` when asked for, else ``None``.
    """

    labels: Path
    probabilities: Path | None
    uncertainty: Path | None = None

    @classmethod
    def of(cls, out_dir: Path, case_id: str, probabilities: bool, uncertainty: bool = False) -> CaseOutputs:
        probs = out_dir / "probabilities" / f"{case_id}.nii.gz" if probabilities else None
        unc = out_dir / "uncertainty" / f"{case_id}.nii.gz" if uncertainty else None
        return cls(out_dir / f"{case_id}.nii.gz", probs, unc)

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.labels, self.probabilities, self.uncertainty) if p is not None]

    def done(self) -> bool:
        """Every output asked for exists."""
        return all(p.is_file() for p in self.paths)


def data_configs(data_config: dict) -> tuple[Any, PreprocessConfig, SymmetryConfig]:
    conv = get_convention(data_config.get("convention", "brats2017"))
    prep = PreprocessConfig.from_dict(data_config.get("preprocess", {}))
    sym = SymmetryConfig(**data_config.get("symmetry", {"enabled": False}))
    return conv, prep, sym


class CaseDataset(Dataset):
    """The cases to predict, read and preprocessed (without symmetry maps) in loader workers.

    An item is a dict: ``image`` ``(Z, C, X, Y)`` float32 of the whole RAS volume, ``mask``, the
    geometry to write the result back (``volume``: affine, header, orientation), the crop ``box``,
    ``timings`` of reading and preprocessing, or ``error`` when the case cannot be used.
    """

    def __init__(self, cases: list[CaseFiles], data_config: dict, output_conventions: list[str]) -> None:
        self.cases = cases
        self.data_config = data_config
        self.output_conventions = output_conventions

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        case = self.cases[i]
        conv, prep, sym = data_configs(self.data_config)
        item: dict[str, Any] = {"case_id": case.case_id, "output_convention": self.output_conventions[i]}
        try:
            pre = preprocess_case(replace(case, label=None), conv, prep, sym.replace(enabled=False))
        except UserError as e:
            return {**item, "error": str(e)}
        vol = pre.volume
        modalities = list(self.data_config.get("modalities") or vol.modalities)
        image = pre.image
        missing = [m for m in modalities if m not in vol.modalities]
        if missing:  # a model trained with data.modality_dropout: the missing sequences are zeros, as in training
            image = np.zeros((len(modalities), *pre.image.shape[1:]), np.float32)
            for c, m in enumerate(modalities):
                if m in vol.modalities:
                    image[c] = pre.image[list(vol.modalities).index(m)]
        item.update(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(3, 0, 1, 2))),
            mask=torch.from_numpy(np.ascontiguousarray(pre.mask.transpose(2, 0, 1))),
            box=pre.box,
            spacing=vol.spacing,
            modalities=modalities,
            missing=missing,
            volume=replace(vol, image=np.empty(0, np.float32), label=None, mask=None),
            timings=pre.timings,
        )
        return item


def layout_convention(case: CaseFiles, files: dict | None, data_config: dict) -> str:
    """The label convention of the input's layout: the one its ``dataset.json`` declares, else the layout's
    (generic layouts keep the training convention)."""
    if case.convention:
        return case.convention
    if case.layout in ("generic", ""):
        return data_config.get("convention", "brats2017")
    return get_layout(case.layout, files).convention
