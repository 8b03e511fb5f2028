"""The commands in-process as a user runs them: prepare, predict, evaluate, export, report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_lightning import evaluate, predict, prepare
from brats_lightning.data.layouts import discover_cases
from brats_lightning.load.predictor import load_model
from tests.helpers import run_main


def test_export_main_writes_the_model_and_what_it_expects(tmp_path: Path, trained_ckpt: Path) -> None:
    pytest.importorskip("onnxruntime")
    from brats_lightning import export
    from tests.helpers import run_main

    run_main(export.main, f"ckpt_path={trained_ckpt}", f"out={tmp_path / 'm.onnx'}", f"hydra.run.dir={tmp_path}")
    from brats_lightning.load.onnx import read_metadata

    meta = read_metadata(tmp_path / "m.onnx")  # in the model's own metadata
    _, data_config = load_model(trained_ckpt)
    assert meta["data_config"] == json.loads(json.dumps(data_config)) and meta["in_channels"] == 8
    assert meta["input_padding"] == {"divisor": 4, "before": 0, "after": 0} and meta["convention"] == "brats2017"
    with pytest.raises(SystemExit):  # not an .onnx name: a clear error, nothing written
        run_main(export.main, f"ckpt_path={trained_ckpt}", f"out={tmp_path / 'm.txt'}", f"hydra.run.dir={tmp_path}")
    assert not (tmp_path / "m.txt").exists()


#: BraTS 2017-2021 file labels -> internal classes (NCR/NET, edema, enhancing)
INTERNAL = {0: 0, 1: 1, 2: 2, 4: 3}


@pytest.fixture
def two_cases(tmp_path: Path, synthetic_root: Path) -> Path:
    """A BraTS 2018-layout folder of two synthetic cases (copies: the commands may not touch the session's)."""
    folder = tmp_path / "cases"
    for case in discover_cases(synthetic_root)[:2]:
        shutil.copytree(Path(case.images["flair"]).parent, folder / case.case_id)
    return folder


def test_prepare_main_preprocesses_every_case_into_the_cache(tmp_path: Path, two_cases: Path) -> None:
    cache = tmp_path / "cache"
    run_main(
        prepare.main,
        "data=brats",
        f"data.root={two_cases}",
        "model=fcn_sym",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    prepared = {p.parent.name: p.parent for p in cache.rglob("meta.json")}
    cases = discover_cases(two_cases)
    assert sorted(prepared) == sorted(c.case_id for c in cases)
    for case in cases:
        folder = prepared[case.case_id]
        image, label, mask = (np.load(folder / f"{n}.npy") for n in ("image", "label", "mask"))
        assert image.shape[1] == 8  # model=fcn_sym: 4 images and their 4 symmetry maps
        # cropped to the brain, the labels are the file's, in internal classes: none lost, none moved class
        raw = np.asarray(nib.load(case.label).dataobj).astype(np.int64)
        counts = np.bincount(np.vectorize(INTERNAL.get)(raw).ravel(), minlength=4)
        np.testing.assert_array_equal(np.bincount(label.ravel(), minlength=4)[1:], counts[1:])
        assert counts[3] > 0  # the case has enhancing tumour: the mapping of label 4 is checked
        # every image channel z-scored inside the brain, zero outside
        inside = image[:, :4].astype(np.float32).transpose(1, 0, 2, 3)[:, mask]
        np.testing.assert_allclose(inside.mean(1), 0, atol=0.02)
        np.testing.assert_allclose(inside.std(1), 1, atol=0.02)
        assert not image[:, :4].transpose(1, 0, 2, 3)[:, ~mask].any()


def test_predict_main_writes_label_maps_in_the_inputs_grid(tmp_path: Path, two_cases: Path, trained_ckpt: Path) -> None:
    out = tmp_path / "pred"
    run_main(
        predict.main,
        f"ckpt_path={trained_ckpt}",
        f"input_dir={two_cases}",
        f"output_dir={out}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    cases = discover_cases(two_cases)
    report = json.loads((out / "predict_report.json").read_text())
    assert sorted(report["done"]) == sorted(c.case_id for c in cases) and report["failed"] == {}
    for case in cases:
        ref = nib.load(case.images["flair"])
        pred = nib.load(out / f"{case.case_id}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
        labels = np.asarray(pred.dataobj)
        # the input's convention (BraTS 2018: 0, 1, 2, 4), nothing outside the brain
        assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        assert not labels[np.asarray(ref.dataobj) == 0].any()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c.case_id}.nii.gz" for c in cases] + ["predict_report.json"]
    )


def test_evaluate_main_scores_a_perfect_and_an_imperfect_prediction(tmp_path: Path, two_cases: Path) -> None:
    """Case A predicted exactly; case B with its enhancing tumour (4) called necrosis (1): WT and TC still exact."""
    a, b = discover_cases(two_cases)
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(a.label, pred / f"{a.case_id}.nii.gz")
    gt_b = nib.load(b.label)
    labels_b = np.asarray(gt_b.dataobj).copy()
    assert (labels_b == 4).any()
    labels_b[labels_b == 4] = 1
    nib.save(nib.Nifti1Image(labels_b, gt_b.affine, gt_b.header), pred / f"{b.case_id}.nii.gz")
    out = tmp_path / "eval"
    run_main(
        evaluate.main,
        f"pred_dir={pred}",
        f"gt_dir={two_cases}",
        f"out_dir={out}",
        "name=relabelled",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and not summary["missing"] and not summary["invalid"]
    means = {r: summary["metrics"][r]["dice"]["mean"] for r in ("wt", "tc", "et")}
    assert means == pytest.approx({"wt": 1.0, "tc": 1.0, "et": 0.5})
    assert summary["metrics"]["wt"]["hd95"]["mean"] == pytest.approx(0.0)
    rows = {(r["case"], r["region"]): r for r in csv.DictReader((out / "per_case.csv").open())}
    assert float(rows[a.case_id, "et"]["dice"]) == 1.0 and float(rows[a.case_id, "et"]["hd95"]) == 0.0
    # B's prediction has no enhancing tumour where the truth has some: Dice 0, the scorer's 373.13 mm
    assert float(rows[b.case_id, "et"]["dice"]) == 0.0
    assert float(rows[b.case_id, "et"]["hd95"]) == pytest.approx(373.13, abs=0.01)
    assert "relabelled" in (out / "summary.md").read_text()


def test_one_command_runs_every_command_and_lists_them(tmp_path: Path, two_cases: Path) -> None:
    """``brats-lightning <command>``: ``--help`` lists the nine commands, an unknown one is one line (exit 2), and
    a command run through it writes what its ``python -m`` form writes."""
    import subprocess
    import sys

    from brats_lightning.cli import COMMANDS, command_arguments
    from brats_lightning.cli import main as cli_main
    from tests.helpers import run_argv

    names = ["train", "crossval", "predict", "evaluate", "report", "prepare", "export", "sweep", "synthesize"]
    assert list(COMMANDS) == names
    script = Path(sys.executable).parent / "brats-lightning"  # the console script pip installed
    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    for name in names:
        assert any(line.startswith(f"  {name} ") for line in shown.stdout.splitlines()), name
    bad = run_argv(cli_main, "trian")
    assert bad.code == 2 and bad.err.strip().splitlines() == [
        f"error: unknown command 'trian'; expected one of {', '.join(names)} (brats-lightning --help)"
    ]
    assert run_argv(cli_main).code == 2  # no command: the list, exit 2
    # crossval is real_fast unless another experiment is named
    assert command_arguments(COMMANDS["crossval"], ["data.root=x"]) == ["experiment=real_fast", "data.root=x"]
    assert command_arguments(COMMANDS["crossval"], ["experiment=mine"]) == ["experiment=mine"]
    # an argparse command and a Hydra command through it, against their python -m forms' outputs
    synth = run_argv(cli_main, "synthesize", str(tmp_path / "syn"), "--n-cases", "2", "--shape", "32", "40", "24",
                     "--no-progress")  # fmt: skip
    assert synth.code == 0 and len(discover_cases(tmp_path / "syn")) == 2
    labels = tmp_path / "labels"
    for case in discover_cases(two_cases):
        labels.mkdir(exist_ok=True)
        shutil.copy(case.label, labels / f"{case.case_id}.nii.gz")
    hydra_quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none", f"hydra.run.dir={tmp_path / 'h'}"]
    assert (
        cli_main(["evaluate", f"pred_dir={labels}", f"gt_dir={two_cases}", f"out_dir={tmp_path / 'a'}", *hydra_quiet])
        == 0
    )
    run_main(evaluate.main, f"pred_dir={labels}", f"gt_dir={two_cases}", f"out_dir={tmp_path / 'b'}",
             f"hydra.run.dir={tmp_path / 'h2'}")  # fmt: skip
    assert (tmp_path / "a" / "per_case.csv").read_text() == (tmp_path / "b" / "per_case.csv").read_text()
