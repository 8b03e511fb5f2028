"""brats_lightning.predict: every case of a folder segmented into the input's grid; bad cases reported, the
others done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_lightning import predict
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import discover_cases
from brats_lightning.errors import ConfigError, DataError, find_user_error
from brats_lightning.inference.uncertainty import agreement
from brats_lightning.predict import predict_dir
from tests.helpers import ENV, can_mount_tmpfs, copy_case, copy_cases, predict_cfg, run_command, shared


def test_predict_writes_an_uncertainty_map_and_ranks_cases_by_agreement(
    tmp_path: Path, trained_ckpt: Path, well_trained_ckpt: Path, synthetic_root: Path
) -> None:
    inp = tmp_path / "in"
    for case in discover_cases(synthetic_root)[:2]:
        shutil.copytree(Path(case.images["flair"]).parent, inp / case.case_id)
    ckpts = [str(trained_ckpt), str(well_trained_ckpt)]
    report = predict_dir(
        predict_cfg(ckpt_path=ckpts, input_dir=str(inp), output_dir=str(tmp_path / "ens"), uncertainty=True)
    )
    conv = get_convention("brats2017")
    # the members' own predictions, predicted apart: their agreement, computed another way
    alone = []
    for i, ckpt in enumerate(ckpts):
        predict_dir(predict_cfg(ckpt_path=ckpt, input_dir=str(inp), output_dir=str(tmp_path / f"m{i}")))
        alone.append(tmp_path / f"m{i}")
    for case in report["done"]:
        unc = nib.load(tmp_path / "ens" / "uncertainty" / f"{case}.nii.gz")
        labels = nib.load(tmp_path / "ens" / f"{case}.nii.gz")
        assert unc.shape == labels.shape and np.allclose(unc.affine, labels.affine)
        u = np.asarray(unc.dataobj)
        assert 0.0 <= u.min() and u.max() <= 1.0 and u.max() > 0.05
        maps = [conv.to_internal(np.asarray(nib.load(d / f"{case}.nii.gz").dataobj)) for d in alone]
        score = report["uncertainty"][case]
        assert score["members"] == 2
        assert score["agreement"] == pytest.approx(agreement(maps, conv), abs=1e-3)
    ranked = report["review_first"]
    assert sorted(ranked) == sorted(report["done"])
    assert [report["uncertainty"][c]["agreement"] for c in ranked] == sorted(
        report["uncertainty"][c]["agreement"] for c in ranked
    )
    saved = json.loads((tmp_path / "ens" / "predict_report.json").read_text())
    assert saved["review_first"] == ranked


def test_predict_fills_a_missing_sequence_only_for_a_model_trained_without_it(
    tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer, trained_ckpt: Path, synthetic_root: Path
) -> None:
    import pytorch_lightning as pl

    from brats_lightning.modules.fcn import FCNModule
    from brats_lightning.nets.fcn import ShenFCN

    dm = BratsDataModule(**tiny_dm_kwargs, symmetry=True, modality_dropout=0.3)
    model = FCNModule(8, 4, width=0.25, test_hd95=False)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    tiny_trainer(tmp_path, 1, [ckpt_cb], limit_train_batches=4, precision="32").fit(model, datamodule=dm)
    case, whole = discover_cases(synthetic_root)[:2]
    inp = tmp_path / "in"
    folder = shutil.copytree(Path(case.images["flair"]).parent, inp / case.case_id)
    shutil.copytree(Path(whole.images["flair"]).parent, inp / whole.case_id)
    (folder / f"{case.case_id}_t1.nii.gz").unlink()  # no T1: the symmetry axis is found on another sequence
    seen: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, ShenFCN) and args[0].shape[1] == 8:
            seen.append(args[0].detach().float())

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        report = predict_dir(
            predict_cfg(
                ckpt_path=str(tmp_path / "ck" / "last.ckpt"), input_dir=str(inp), output_dir=str(tmp_path / "o")
            )
        )
    finally:
        hook.remove()
    # the case without T1 reaches the net as training showed it: T1's image and its symmetry map zero (the map
    # of a zero image is 0 by construction; predict also zeroes it explicitly)
    zeroed = [x for x in seen if x[:, [1, 5]].abs().max() == 0]
    assert zeroed and all(x[:, [0, 2, 3, 4, 6, 7]].abs().max() > 0 for x in zeroed)
    assert report["done"] == sorted([case.case_id, whole.case_id])
    assert report["missing_modalities"] == {case.case_id: ["t1"]}
    assert nib.load(tmp_path / "o" / f"{case.case_id}.nii.gz").shape == nib.load(case.images["flair"]).shape
    refused = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(tmp_path / "p")))
    assert refused["done"] == [whole.case_id]
    reason = refused["failed"][case.case_id]
    assert "missing t1 image" in reason and "not trained for missing sequences: data.modality_dropout" in reason


def test_predict_writes_labels_in_the_input_grid(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    src = synthetic_root
    out = tmp_path / "pred"
    report = predict_dir(
        predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(src), output_dir=str(out), probabilities=True)
    )
    cases = discover_cases(src)
    assert sorted(report["done"]) == sorted(c.case_id for c in cases) and not report["failed"]
    for c in cases[:3]:
        ref = nib.load(c.images["flair"])
        pred = nib.load(out / f"{c.case_id}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(ref.affine)
        labels = np.asarray(pred.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        probs = nib.load(out / "probabilities" / f"{c.case_id}.nii.gz").get_fdata()
        assert probs.shape == (*ref.shape, 4)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
        # the label map is the argmax of the probabilities, in file labels
        np.testing.assert_array_equal(np.array([0, 1, 2, 4])[probs.argmax(-1)], labels)
        # nothing outside the brain
        brain = np.asarray(ref.dataobj) != 0
        assert not labels[~brain].any()
    assert json.loads((out / "predict_report.json").read_text())["done"]
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_predict_skips_existing_and_reports_unreadable_cases(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    src = synthetic_root
    inp = tmp_path / "in"
    inp.mkdir()
    cases = discover_cases(src)
    for c in cases[:3]:
        (inp / c.case_id).symlink_to(Path(c.images["flair"]).parent)
    # a fourth case with a corrupt FLAIR
    bad = inp / "Synth_bad"
    bad.mkdir()
    for f in Path(cases[3].images["flair"]).parent.iterdir():
        (bad / f.name.replace(cases[3].case_id, "Synth_bad")).write_bytes(f.read_bytes())
    data = (bad / "Synth_bad_flair.nii.gz").read_bytes()
    (bad / "Synth_bad_flair.nii.gz").write_bytes(data[: len(data) // 3])
    out = tmp_path / "pred"
    first = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert len(first["done"]) == 3 and list(first["failed"]) == ["Synth_bad"]
    assert "Synth_bad_flair.nii.gz: cannot read image" in first["failed"]["Synth_bad"]
    assert not (out / "Synth_bad.nii.gz").exists()
    stamp = os.stat(out / f"{cases[0].case_id}.nii.gz").st_mtime_ns
    again = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert len(again["skipped"]) == 3 and not again["done"]
    assert os.stat(out / f"{cases[0].case_id}.nii.gz").st_mtime_ns == stamp
    # overwrite=no is not a yes: it was accepted (a non-empty string is true) and rewrote the complete outputs
    refused = run_command(
        predict.main, f"ckpt_path={trained_ckpt}", f"input_dir={inp}", f"output_dir={out}", "overwrite=no",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert refused.code == 2 and refused.err == "error: overwrite: Input should be a valid boolean (got 'no')\n"
    assert os.stat(out / f"{cases[0].case_id}.nii.gz").st_mtime_ns == stamp
    forced = predict_dir(
        predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), overwrite=True)
    )
    assert len(forced["done"]) == 3


def test_interrupted_write_leaves_no_file(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path, monkeypatch
) -> None:
    src = synthetic_root
    inp = tmp_path / "in"
    inp.mkdir()
    case = discover_cases(src)[0]
    (inp / case.case_id).symlink_to(Path(case.images["flair"]).parent)
    real_save = nib.save

    def broken_save(img, filename):
        real_save(img, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    out = tmp_path / "pred"
    report = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert "disk full" in report["failed"][case.case_id]
    assert [p.name for p in out.iterdir()] == ["predict_report.json"]


@pytest.mark.realdata
def test_predict_round_trip_on_real_cases(tmp_path: Path, trained_ckpt: Path) -> None:
    """A real BraTS 2018 and a BraTS 2023 case come back in their own grid and label convention."""
    inp18, inp23 = tmp_path / "in18", tmp_path / "in23"
    inp18.mkdir()
    inp23.mkdir()
    case18 = shared("brats2018") / "Brats18_CBICA_ABM_1"
    (inp18 / case18.name).symlink_to(case18)
    case23 = shared("brats2023_unlabeled") / "BraTS-GLI-00001-000"
    (inp23 / case23.name).symlink_to(case23)
    for inp, case, ref_name, allowed in (
        (inp18, case18, f"{case18.name}_flair.nii.gz", {0, 1, 2, 4}),
        (inp23, case23, f"{case23.name}-t2f.nii.gz", {0, 1, 2, 3}),
    ):
        out = tmp_path / f"out_{inp.name}"
        report = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
        assert report["done"] == [case.name], report
        ref = nib.load(case / ref_name)
        pred = nib.load(out / f"{case.name}.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= allowed


def test_predict_reports_inconsistent_cases_and_does_the_rest(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    src = synthetic_root
    cases = discover_cases(src)
    inp = tmp_path / "in"
    for k, c in enumerate(cases[:3]):
        d = inp / c.case_id
        d.mkdir(parents=True)
        for f in Path(c.images["flair"]).parent.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        t2 = d / f"{c.case_id}_t2.nii.gz"
        img = nib.load(t2)
        if k == 1:  # NaN voxels
            arr = np.asarray(img.dataobj).astype(np.float32)
            arr[3, 3, 3] = np.nan
            nib.save(nib.Nifti1Image(arr, img.affine), t2)
        elif k == 2:  # a modality with a different shape
            nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), img.affine), t2)
    out = tmp_path / "out"
    report = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert report["done"] == [cases[0].case_id]
    assert "NaN or infinite voxels" in report["failed"][cases[1].case_id]
    assert "shape (10, 10, 10) differs" in report["failed"][cases[2].case_id]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{cases[0].case_id}.nii.gz", "predict_report.json"])


def test_predict_completes_what_a_kill_or_a_new_option_left_missing(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    cases = discover_cases(synthetic_root)[:2]
    inp = tmp_path / "in"
    copy_case(cases[0], inp, "A")
    copy_case(cases[1], inp, "A_probs")  # a case whose name looked like A's probability map
    out = tmp_path / "out"
    first = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert sorted(first["done"]) == ["A", "A_probs"]
    # a rerun asking for probabilities completes them (today: skipped, never written)
    again = predict_dir(
        predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), probabilities=True)
    )
    assert sorted(again["done"]) == ["A", "A_probs"] and not again["skipped"]
    a_probs = out / "probabilities" / "A.nii.gz"
    assert a_probs.is_file() and (out / "probabilities" / "A_probs.nii.gz").is_file()
    assert nib.load(out / "A_probs.nii.gz").ndim == 3 and nib.load(a_probs).ndim == 4  # no collision
    # a kill between the label map and the probability map, with a temporary file left behind
    a_probs.unlink()
    stale = out / "probabilities" / ".A.somehost_x-999999.tmp.nii.gz"
    stale.write_bytes(b"partial")
    dead = out / f".A_probs.{__import__('brats_lightning.files', fromlist=['x'])._HOST}-999999.tmp.nii.gz"
    dead.write_bytes(b"partial")
    os.utime(stale, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    third = predict_dir(
        predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), probabilities=True)
    )
    assert third["done"] == ["A"] and third["skipped"] == ["A_probs"]
    assert a_probs.is_file() and not stale.exists() and not dead.exists()
    assert not list(out.rglob(".*tmp*"))


def test_predict_does_every_good_case_and_reports_the_bad_ones(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    cases = discover_cases(synthetic_root)[:5]
    inp = tmp_path / "in"
    good = copy_case(cases[0], inp)
    (copy_case(cases[1], inp) / f"{cases[1].case_id}_t1.nii.gz").unlink()  # missing modality
    d = copy_case(cases[2], inp)
    (d / f"{cases[2].case_id}_t2.nii.gz").unlink()
    (d / f"{cases[2].case_id}_t2.nii.gz").mkdir()  # a directory where a file should be
    d = copy_case(cases[3], inp)
    (d / f"{cases[3].case_id}_t1ce.nii.gz").unlink()
    (d / f"{cases[3].case_id}_t1ce.nii.gz").symlink_to(tmp_path / "gone.nii.gz")  # a broken link
    copy_case(cases[4], inp)
    (inp / cases[4].case_id).rename(inp / "Renamed_case")  # files named for another case
    out = tmp_path / "out"
    report = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    assert report["done"] == [good.name]
    failed = report["failed"]
    assert "missing t1 image" in failed[cases[1].case_id]
    assert f"{cases[2].case_id}_t2.nii.gz: is a directory" in failed[cases[2].case_id]
    assert "broken symbolic link" in failed[cases[3].case_id]
    assert "no file named as the brats2018 layout expects" in failed["Renamed_case"]
    saved = json.loads((out / "predict_report.json").read_text())
    assert saved["failed"] == failed
    # the command exits non-zero and says why, without a traceback
    run = run_command(
        predict.main,
        f"ckpt_path={trained_ckpt}",
        f"input_dir={inp}",
        f"output_dir={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert run.code == 1 and "4 case(s) failed" in run.err and "Traceback" not in run.err


def test_predict_stops_at_the_first_full_disk_error(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    """A real full file system (a 24 kB tmpfs in a user and mount namespace): one line naming the file,
    no later case tried, no report claiming more than what is on disk (an earlier one is gone)."""
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a small tmpfs here (unshare --user --mount is not permitted)")
    data = copy_cases(synthetic_root, tmp_path / "data", 6)
    out = tmp_path / "out"
    out.mkdir()
    stale = {"done": sorted(p.name for p in data.iterdir()), "failed": {}}
    script = (
        f"mount -t tmpfs -o size=24k none {out} && "
        f"echo '{json.dumps(stale)}' > {out}/predict_report.json && "
        f"{sys.executable} -m brats_lightning.predict ckpt_path={trained_ckpt} input_dir={data} output_dir={out} "
        f"num_workers=0 hydra.run.dir={tmp_path / 'run'}; rc=$?; "
        f"ls -a {out} > {tmp_path / 'listing'}; cat {out}/predict_report.json > {tmp_path / 'report'} 2>/dev/null; "
        "exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/") and "No space left on device" in last, last
    assert "Traceback" not in proc.stderr
    written = int(last.split("stopped at the first full-disk error: ")[1].split(" case")[0])
    not_tried = int(last.split("written, ")[1].split(" not attempted")[0])
    assert written + 1 + not_tried == 6 and not_tried >= 1  # stopped at the first failure
    listing = (tmp_path / "listing").read_text().split()
    on_disk = {n.removesuffix(".nii.gz") for n in listing if n.endswith(".nii.gz") and not n.startswith(".")}
    assert len(on_disk) == written and not [n for n in listing if ".tmp" in n]  # no half-written file
    report = (tmp_path / "report").read_text()
    if report:  # written only if it fitted; then it says what is on disk, never the earlier run's claim
        doc = json.loads(report)
        assert set(doc["done"]) == on_disk and len(doc["not_attempted"]) == not_tried
    assert "predict_report.json" not in listing or report


def test_a_predict_that_fails_leaves_no_empty_output_folder(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    data = copy_cases(synthetic_root, tmp_path / "data", 1)
    out = tmp_path / "new" / "out"
    with pytest.raises(ConfigError, match=r"postprocess_options.min_slices: Input should be a valid integer"):
        predict_dir(
            predict_cfg(
                ckpt_path=str(trained_ckpt),
                input_dir=str(data),
                output_dir=str(out),
                postprocess=True,
                postprocess_options={"min_slices": "three"},
            )
        )
    assert not (tmp_path / "new").exists()
    # a failure after the folder was made (no case can be read) leaves the report, not an empty folder
    (next(data.iterdir()) / f"{next(data.iterdir()).name}_t1.nii.gz").write_bytes(b"broken")
    report = predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(data), output_dir=str(out)))
    assert report["failed"] and (out / "predict_report.json").is_file()


def test_a_user_error_in_a_loader_worker_is_one_line() -> None:
    from brats_lightning.errors import one_line

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nbrats_lightning.errors.DataError: /c/image.npy: the prepared array does not'
    )
    assert one_line(wrapped) == "/c/image.npy: the prepared array does not"
    assert find_user_error(RuntimeError("x")) is None


def test_uncertainty_from_one_member_is_refused(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    """One model without flips has no members to agree: it ran (a warning) and wrote maps without the agreement."""
    inp = copy_cases(synthetic_root, tmp_path / "in", 1)
    out = tmp_path / "out"
    cfg = predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out), uncertainty=True)
    with pytest.raises(ConfigError, match=r"^uncertainty=true: one model without test-time flips is one member"):
        predict_dir(cfg)
    assert not out.exists()
    with_flips = predict_dir(predict_cfg(**{**cfg, "tta": True, "tta_flips": ["lr"]}))  # two members: the flips
    (case,) = with_flips["done"]
    assert with_flips["uncertainty"][case]["agreement"] is not None
