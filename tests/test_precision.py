"""bf16 where the hardware has it: predictions agree with fp32."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from brats_lightning.data.io import discover_cases
from brats_lightning.metrics import dice
from brats_lightning.precision import bf16_supported, inference_dtype, training_precision
from brats_lightning.predict import predict_dir

pytestmark = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no bf16 units")


def test_policy_follows_the_hardware() -> None:
    import torch

    assert inference_dtype("auto", "cpu") == torch.bfloat16 and inference_dtype("fp32", "cpu") == torch.float32
    assert training_precision() == "bf16-mixed"
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        inference_dtype("half", "cpu")


def test_predict_in_bf16_agrees_with_fp32(tmp_path: Path, well_trained_ckpt: Path, medium_root: Path) -> None:
    """The same labels on >= 99.5% of brain voxels and Dice per region (mean over cases) within 0.005."""
    cfg = {
        "ckpt_path": str(well_trained_ckpt),
        "input_dir": str(medium_root),
        "layout": "auto",
        "files": None,
        "output_convention": "auto",
        "probabilities": False,
        "postprocess": False,
        "overwrite": False,
        "device": "cpu",
        "batch_size": 4,
        "num_workers": 0,
    }
    reports = {
        p: predict_dir(OmegaConf.create({**cfg, "precision": p, "output_dir": str(tmp_path / p)}))
        for p in ("fp32", "bf16")
    }
    assert reports["bf16"]["precision"] == "bf16" and reports["fp32"]["precision"] == "fp32"
    agree, brain = 0, 0
    scores: dict[str, list[tuple[float, float]]] = {"wt": [], "tc": [], "et": []}
    for case in discover_cases(medium_root):
        a = np.asarray(nib.load(tmp_path / "fp32" / f"{case.case_id}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "bf16" / f"{case.case_id}.nii.gz").dataobj)
        gt = np.asarray(nib.load(case.label).dataobj)
        m = np.asarray(nib.load(case.images["t1"]).dataobj) != 0
        agree += int((a[m] == b[m]).sum())
        brain += int(m.sum())
        for region, labels in (("wt", (1, 2, 4)), ("tc", (1, 4)), ("et", (4,))):
            g = np.isin(gt, labels)
            scores[region].append((dice(np.isin(a, labels), g), dice(np.isin(b, labels), g)))
    assert agree / brain >= 0.995, agree / brain
    for region, pairs in scores.items():
        fp32, bf16 = np.mean(pairs, axis=0)
        assert fp32 > 0.5, (region, fp32)  # a model that segments
        assert abs(fp32 - bf16) <= 0.005, (region, fp32, bf16)
