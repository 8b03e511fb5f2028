"""brats_lightning.export: ONNX equals torch, and predict with it writes the checkpoint's labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from brats_lightning.data.layouts import discover_cases
from brats_lightning.load.predictor import load_model
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.predict import predict_dir

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: FCNModule(8, 4), (2, 8, 192, 160)),  # FCN + symmetry maps, full width, a BraTS brain box
        (lambda: PatchCNNModule("twopath", in_channels=4, num_classes=4), (1, 4, 160, 144)),
        # a cascade with its frozen first stage: 15 s of export tracing, run with the slow tests
        pytest.param(
            lambda: PatchCNNModule("local_cascade", in_channels=4, num_classes=4),
            (1, 4, 120, 100),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["fcn_sym", "twopath", "local_cascade"],
)
def test_onnx_equals_torch(tmp_path: Path, make, shape: tuple[int, ...]) -> None:
    from brats_lightning.export import export_onnx
    from brats_lightning.load.onnx import OnnxModule, read_metadata

    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that folding them is tested
        for m in model.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model.predict_slices(x)
    out = export_onnx(model, {"modalities": ["flair", "t1", "t1c", "t2"]}, tmp_path / "m.onnx")
    meta = read_metadata(out)  # the settings travel inside the model: no file beside it
    assert not (tmp_path / "m.json").exists()
    assert meta["input_padding"] == model.input_padding.to_dict() and meta["num_classes"] == 4
    onnx = OnnxModule(out)
    got = onnx.predict_slices(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # another slice size and batch, from the same file (dynamic axes)
    y = torch.randn(shape[0] + 1, shape[1], shape[2] - 8, shape[3] + 12)
    with torch.no_grad():
        torch.testing.assert_close(onnx.predict_slices(y), model.predict_slices(y), atol=1e-4, rtol=0)


def test_predict_with_the_exported_model_writes_the_checkpoints_labels(
    tmp_path: Path, well_trained_ckpt: Path, medium_root: Path
) -> None:
    from brats_lightning.export import export_onnx

    model, data_config = load_model(well_trained_ckpt)
    onnx_path = export_onnx(model, data_config, tmp_path / "model.onnx")
    cfg = {
        "input_dir": str(medium_root),
        "postprocess": "auto",
        "device": "cpu",
        "precision": "fp32",
        "batch_size": 4,
        "num_workers": 0,
    }
    reports = {
        name: predict_dir(OmegaConf.create({**cfg, "ckpt_path": str(ckpt), "output_dir": str(tmp_path / name)}))
        for name, ckpt in (("torch", well_trained_ckpt), ("onnx", onnx_path))
    }
    assert reports["onnx"]["done"] == reports["torch"]["done"] and not reports["onnx"]["failed"]
    agree, total = 0, 0
    for case in discover_cases(medium_root):
        a = np.asarray(nib.load(tmp_path / "torch" / f"{case.case_id}.nii.gz").dataobj)
        b = nib.load(tmp_path / "onnx" / f"{case.case_id}.nii.gz")
        assert np.allclose(b.affine, nib.load(case.images["t1"]).affine)
        agree += int((a == np.asarray(b.dataobj)).sum())
        total += a.size
    assert agree / total >= 0.999, agree / total
