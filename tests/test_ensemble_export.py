"""Predict like the leaders: ensembles of checkpoints, test-time mirroring, an exported ONNX model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import CheckpointError
from brats_lightning.inference.flips import tta_flips
from brats_lightning.load.predictor import check_compatible, load_model
from brats_lightning.load.runs import find_checkpoints
from brats_lightning.modules.ensemble import EnsembleModule
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.predict import predict_dir

pytest.importorskip("onnxruntime")


def _mirror_symmetric_(module: SegmentationModule, dim: int = 2) -> SegmentationModule:
    """Make every kernel symmetric under the flip of ``dim``: the net becomes mirror-equivariant."""
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(dim)) / 2)
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, same for every pixel
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


@pytest.mark.parametrize(
    "make",
    [lambda: FCNModule(8, 4, width=0.25), lambda: PatchCNNModule("twopath", in_channels=4, num_classes=4)],
    ids=["fcn", "twopath"],
)
def test_mirroring_leaves_a_mirror_equivariant_net_unchanged(make) -> None:
    """Whole-slice inference stays exact under TTA: x is axis -2 of the slices, 96 a multiple of 4."""
    torch.manual_seed(0)
    model = make().eval()
    channels = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.randn(2, channels, 96, 70)
    tta = EnsembleModule([model], tta_flips(["lr"]))
    with torch.no_grad():
        assert not torch.allclose(tta.predict_slices(x), model.predict_slices(x), atol=1e-4)  # a generic net
        _mirror_symmetric_(model)
        plain, mirrored = model.predict_slices(x), tta.predict_slices(x)
    torch.testing.assert_close(mirrored, plain, atol=2e-6, rtol=0)
    assert plain.shape == (2, 4, 96, 70)


def test_ensemble_averages_the_members_probabilities(trained_ckpt: Path, well_trained_ckpt: Path) -> None:
    a, _ = load_model(trained_ckpt)
    b, _ = load_model(well_trained_ckpt)
    x = torch.randn(3, 8, 48, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = (a.predict_slices(x) + b.predict_slices(x)) / 2
        torch.testing.assert_close(EnsembleModule([a, b]).predict_slices(x), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(EnsembleModule([a]).predict_slices(x), a.predict_slices(x), atol=0, rtol=0)
    assert EnsembleModule([a, b]).display_name.endswith("(ensemble of 2)")


def test_incompatible_checkpoints_are_refused_naming_both(trained_ckpt: Path) -> None:
    _, cfg = load_model(trained_ckpt)
    other = json.loads(json.dumps(cfg))
    other["symmetry"]["enabled"] = not cfg["symmetry"]["enabled"]
    assert check_compatible([cfg, json.loads(json.dumps(cfg))], ["a.ckpt", "b.ckpt"]) == cfg
    with pytest.raises(CheckpointError, match=r"b\.ckpt: cannot be ensembled with a\.ckpt: its symmetry"):
        check_compatible([cfg, other], ["a.ckpt", "b.ckpt"])
    with pytest.raises(ValueError, match="unknown test-time flip"):
        tta_flips(["up"])


def test_checkpoints_are_found_in_run_and_multirun_folders(tmp_path: Path, trained_ckpt: Path) -> None:
    for job in ("0", "1"):
        (tmp_path / "multi" / job / "checkpoints").mkdir(parents=True)
        shutil.copy(trained_ckpt, tmp_path / "multi" / job / "checkpoints" / "best.ckpt")
    (tmp_path / "multi" / ".hydra").mkdir()
    found = find_checkpoints(tmp_path / "multi")
    assert found == [tmp_path / "multi" / j / "checkpoints" / "best.ckpt" for j in ("0", "1")]
    assert find_checkpoints(tmp_path / "multi" / "1") == [found[1]]
    assert find_checkpoints([str(found[0]), found[1]]) == found
    with pytest.raises(CheckpointError, match="no checkpoint in this folder"):
        find_checkpoints(tmp_path / "multi" / ".hydra")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_checkpoints(tmp_path / "nope")


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: FCNModule(8, 4), (2, 8, 192, 160)),  # FCN + symmetry maps, full width, a BraTS brain box
        (lambda: PatchCNNModule("twopath", in_channels=4, num_classes=4), (1, 4, 160, 144)),
        (lambda: PatchCNNModule("local_cascade", in_channels=4, num_classes=4), (1, 4, 120, 100)),
    ],
    ids=["fcn_sym", "twopath", "local_cascade"],
)
def test_onnx_equals_torch(tmp_path: Path, make, shape: tuple[int, ...]) -> None:
    from brats_lightning.export import export_onnx
    from brats_lightning.load.onnx import OnnxModule, read_sidecar

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
    meta = read_sidecar(out)
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


def test_report_adds_the_ensemble_of_folds_scored_on_the_same_test_cases(tmp_path: Path, cv_multirun: Path) -> None:
    """Two folds of a cross-validation multirun: the report's ensemble row; an ensemble of one fold's
    checkpoint twice must reproduce that fold's own test metrics (same test cases, same metrics)."""
    import csv

    from brats_lightning.report import write_report

    sweep = cv_multirun
    rows = {r["setting"]: r for r in csv.DictReader(write_report(sweep, tmp_path / "r1")["results.csv"].open())}
    assert set(rows) == {"FCN (3 blocks)", "FCN (3 blocks), ensemble of 2 folds"}
    assert 0.0 < float(rows["FCN (3 blocks), ensemble of 2 folds"]["dice_wt_mean"])
    # fold 0 twice: its own test metrics, exactly
    twice = tmp_path / "twice"
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    for i in (0, 1):
        shutil.copytree(jobs[0], twice / f"{i}_job")
        ov = twice / f"{i}_job" / ".hydra" / "overrides.yaml"
        ov.write_text(ov.read_text().replace("data.fold=0", f"data.fold={i}"))
    rows = {r["setting"]: r for r in csv.DictReader(write_report(twice, tmp_path / "r2")["results.csv"].open())}
    own = json.loads((jobs[0] / "metrics.json").read_text())
    ens = rows["FCN (3 blocks), ensemble of 2 folds"]
    for key in ("dice_wt", "dice_tc", "dice_et", "ppv_wt", "sensitivity_et"):
        assert float(ens[f"{key}_mean"]) == pytest.approx(own[f"test/{key}"], abs=1e-5), key


def test_export_main_writes_the_model_and_what_it_expects(tmp_path: Path, trained_ckpt: Path) -> None:
    from brats_lightning import export
    from tests.helpers import run_main

    run_main(export.main, f"ckpt_path={trained_ckpt}", f"out={tmp_path / 'm.onnx'}", f"hydra.run.dir={tmp_path}")
    meta = json.loads((tmp_path / "m.json").read_text())
    _, data_config = load_model(trained_ckpt)
    assert meta["data_config"] == json.loads(json.dumps(data_config)) and meta["in_channels"] == 8
    assert meta["input_padding"] == {"divisor": 4, "before": 0, "after": 0} and meta["convention"] == "brats2017"
    with pytest.raises(SystemExit):  # not an .onnx name: a clear error, nothing written
        run_main(export.main, f"ckpt_path={trained_ckpt}", f"out={tmp_path / 'm.txt'}", f"hydra.run.dir={tmp_path}")
    assert not (tmp_path / "m.txt").exists()
