"""bf16 where the hardware has it (and really used then), fp32 elsewhere; predictions agree with fp32."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from brats_lightning.data.layouts import discover_cases
from brats_lightning.evaluation.metrics import dice
from brats_lightning.precision import bf16_supported, inference_dtype, training_precision
from brats_lightning.predict import predict_dir

needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no bf16 units")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_the_choice_follows_the_hardware(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    """The rule, on any CPU: the capability is faked both ways."""
    import torch

    from brats_lightning import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    assert inference_dtype("auto", "cpu") == (torch.bfloat16 if has_bf16 else torch.float32)
    assert inference_dtype("fp32", "cpu") == torch.float32
    assert training_precision() == ("bf16-mixed" if has_bf16 else "32")
    if has_bf16:
        assert inference_dtype("bf16", "cpu") == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="precision=bf16, but cpu has no bf16 units"):
            inference_dtype("bf16", "cpu")
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        inference_dtype("half", "cpu")


def _conv_dtypes(monkeypatch: pytest.MonkeyPatch, has_bf16: bool, ckpt: Path, root: Path, out: Path) -> set:
    """The dtypes of every convolution's output while ``predict`` (precision auto) runs."""
    import torch

    from brats_lightning import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    seen: set = set()

    def hook(module, inputs, output) -> None:
        if isinstance(module, torch.nn.Conv2d):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        case = discover_cases(root)[0]
        single = out / "in"
        import shutil

        shutil.copytree(Path(case.images["flair"]).parent, single / case.case_id)
        cfg = {"ckpt_path": str(ckpt), "input_dir": str(single), "output_dir": str(out / "pred"), "device": "cpu"}
        report = predict_dir(OmegaConf.create({**cfg, "precision": "auto", "num_workers": 0, "postprocess": False}))
        assert report["precision"] == ("bf16" if has_bf16 else "fp32") and report["done"]
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_is_really_used_where_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_ckpt: Path, synthetic_root: Path, has_bf16: bool
) -> None:
    """A forward hook sees bf16 activations when bf16 is chosen, fp32 ones otherwise (autocast runs bf16 on
    any CPU, slowly without bf16 units: the faked capability is enough to see the choice take effect)."""
    import torch

    seen = _conv_dtypes(monkeypatch, has_bf16, trained_ckpt, synthetic_root, tmp_path)
    assert seen == ({torch.bfloat16} if has_bf16 else {torch.float32}), seen


@needs_bf16
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
