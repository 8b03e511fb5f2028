"""The data sets as people download them: the Decathlon's Task01_BrainTumour (4D images), nnU-Net v2 raw data sets
(a file per channel, region-based labels) and BraTS 2024 post-treatment folders (a resection cavity, label 4).

Each is written from BraTS-layout cases by ``scripts/convert_layouts.py`` (only names, channel packing and label
values change), so every array read and every figure scored must equal the BraTS layout's.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from brats_lightning.config import compose
from brats_lightning.data.labels import REGIONS, get_convention
from brats_lightning.data.layouts import dataset_convention, declared_convention, detect_layout, discover_cases
from brats_lightning.data.readers import load_case
from brats_lightning.errors import DataError
from brats_lightning.evaluation.folders import evaluate_dirs
from brats_lightning.predict.run import predict_dir
from tests.helpers import ROOT, shared


def _converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_layouts", ROOT / "scripts" / "convert_layouts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _brats_copy(src: Path, dest: Path, n: int) -> Path:
    for case in discover_cases(src)[:n]:
        shutil.copytree(Path(case.images["flair"]).parent, dest / case.case_id)
    return dest


def _debug_training(root: Path, cache: Path, *extra: str) -> list[str]:
    """The overrides of a debug-size training on the data set at ``root`` (its own layout and convention)."""
    return ["debug=default", "data=brats", f"data.root={root}", f"paths.cache_dir={cache}", "data.num_folds=2",
            "data.test_fraction=0.34", "model.width=0.25", "trainer.limit_train_batches=2", "model.test_hd95=false",
            *extra]  # fmt: skip


def _images_and_truths(brats: Path, roots: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """What predict reads and what evaluate scores against, per layout: the BraTS folder itself, the MSD and
    nnU-Net image and label folders, the BraTS 2024 folder itself."""
    images = {"brats": brats, "msd": roots["msd"] / "imagesTr", "nnunet": roots["nnunet"] / "imagesTr",
              "brats2024": roots["brats2024"]}  # fmt: skip
    truths = {**images, "msd": roots["msd"] / "labelsTr", "nnunet": roots["nnunet"] / "labelsTr"}
    return images, truths


@pytest.fixture
def converted(tmp_path: Path, synthetic_root: Path) -> dict[str, Path]:
    """Three synthetic BraTS 2018-layout cases, and the same cases as MSD, nnU-Net and BraTS 2024 data sets."""
    conv = _converter()
    brats = _brats_copy(synthetic_root, tmp_path / "brats", 3)
    cases = sorted(p for p in brats.iterdir())
    return {
        "brats": brats,
        "msd": conv.write_msd(cases, tmp_path / "out"),
        "nnunet": conv.write_nnunet(cases, tmp_path / "out"),
        "brats2024": conv.write_brats2024(cases, tmp_path / "out", cavity=True),
    }


def _original_id(layout: str, task: Path, case_id: str) -> str:
    if layout == "msd":
        return json.loads((task / "names.json").read_text())[case_id]
    return case_id.replace("-", "_")


@pytest.mark.parametrize("layout", ["msd", "nnunet", "brats2024"])
def test_every_layout_reads_the_same_images_and_regions_as_the_brats_one(
    converted: dict[str, Path], layout: str
) -> None:
    root = converted[layout]
    expected_convention = {"msd": "msd", "nnunet": "msd", "brats2024": "brats2024"}[layout]
    assert detect_layout(root).name == {"msd": "msd", "nnunet": "nnunet", "brats2024": "brats2023"}[layout]
    assert dataset_convention(root) == expected_convention  # what data=brats trains with
    originals = {c.case_id: c for c in discover_cases(converted["brats"])}
    cases = discover_cases(root)
    assert len(cases) == 3
    brats2017 = get_convention("brats2017")
    conv = get_convention(expected_convention)
    for case in cases:
        original = load_case(originals[_original_id(layout, root, case.case_id)])
        vol = load_case(case)
        assert vol.modalities == original.modalities == ("flair", "t1", "t1c", "t2")
        np.testing.assert_allclose(vol.image, original.image, rtol=0, atol=1e-4)  # every channel in its place
        assert vol.label is not None and original.label is not None
        got = conv.region_masks(conv.to_internal(vol.label))
        want = brats2017.region_masks(brats2017.to_internal(original.label))
        for r in REGIONS:
            np.testing.assert_array_equal(got[r], want[r])
        if layout == "brats2024":  # the painted cavity is its own region, outside the whole tumour
            rc = conv.region_masks(conv.to_internal(vol.label), conv.scored_regions)["rc"]
            assert rc.any() and not (rc & got["wt"]).any()


def test_a_layout_s_dataset_json_problems_are_one_line_naming_it(converted: dict[str, Path]) -> None:
    task = converted["nnunet"]
    doc = json.loads((task / "dataset.json").read_text())
    (task / "dataset.json").write_text(json.dumps({**doc, "channel_names": {"0": "T1", "1": "DWI"}}))
    with pytest.raises(DataError, match=rf"{task / 'dataset.json'}: channel 1 is 'DWI', not a sequence"):
        discover_cases(task)
    (task / "dataset.json").write_text(json.dumps({**doc, "labels": {"background": 0, "tumour": 1}}))
    with pytest.raises(DataError, match=r"dataset.json: region-based labels need|match no label convention"):
        discover_cases(task)
    (task / "dataset.json").write_text(json.dumps(doc))
    first = sorted((task / "imagesTr").glob("*_0002.nii.gz"))[0]
    first.unlink()  # a case without its T2
    problems: list = []
    cases = discover_cases(task, problems=problems)
    assert len(cases) == 2 and len(problems) == 1 and "lacks ['t2']" in problems[0].reason
    with pytest.raises(DataError, match=r"1 case folder\(s\) of .* cannot be used"):
        discover_cases(task)
    for t2 in (task / "imagesTr").glob("*_0002.nii.gz"):
        t2.unlink()  # no case has a T2: one line naming the option that trains without it
    with pytest.raises(DataError) as e:
        discover_cases(task)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{task}: every case (3) lacks its t2 image (")
    assert str(e.value).endswith("train without it: data.modalities=[flair,t1,t1c]")


def test_a_declared_convention_is_never_overridden_silently(converted: dict[str, Path], cache_dir: Path) -> None:
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(root=str(converted["msd"]), convention="brats2017", cache_dir=str(cache_dir))
    with pytest.raises(DataError, match=r"declares the msd label convention, but data.convention=brats2017"):
        dm.discover()
    assert declared_convention(converted["msd"] / "labelsTr") == "msd"
    assert declared_convention(converted["brats"]) is None


@pytest.mark.parametrize("layout", ["msd", "nnunet", "brats2024"])
def test_train_on_each_layout_at_debug_size(tmp_path: Path, converted: dict[str, Path], layout: str) -> None:
    from brats_lightning.files import read_checkpoint
    from brats_lightning.training.train import train

    root = converted[layout]
    out = tmp_path / "run"
    cfg = compose(_debug_training(root, tmp_path / "cache", "data.crop_size=[48,56]"), output_dir=str(out))
    convention = {"msd": "msd", "nnunet": "msd", "brats2024": "brats2024"}[layout]
    assert cfg.data.convention == convention and cfg.data.num_classes == get_convention(convention).num_classes
    results = train(cfg)
    ckpt = read_checkpoint(results["best_ckpt"])
    assert ckpt["data_config"]["convention"] == convention
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert rows and {r["region"] for r in rows} >= set(REGIONS)


def test_predict_then_evaluate_in_each_layout_equals_the_brats_layout(
    tmp_path: Path, well_trained_ckpt: Path, medium_root: Path
) -> None:
    """The trained model on the same three cases in four layouts: the labels it writes are the same tissues in
    each data set's own labels and files, and evaluate scores every case as on the BraTS layout."""
    conv = _converter()
    brats = _brats_copy(medium_root, tmp_path / "brats", 3)
    cases = sorted(brats.iterdir())
    roots = {
        "brats": brats,
        "msd": conv.write_msd(cases, tmp_path / "out"),
        "nnunet": conv.write_nnunet(cases, tmp_path / "out"),
        "brats2024": conv.write_brats2024(cases, tmp_path / "out", cavity=True),
    }
    inputs, truths = _images_and_truths(brats, roots)
    figures: dict[str, dict[tuple[str, str], dict[str, str]]] = {}
    for name in roots:
        cfg = {"ckpt_path": str(well_trained_ckpt), "input_dir": str(inputs[name]), "device": "cpu",
               "precision": "fp32", "num_workers": 0, "output_dir": str(tmp_path / "pred" / name)}  # fmt: skip
        report = predict_dir(OmegaConf.create(cfg))
        assert len(report["done"]) == 3 and not report["failed"], report
        written = nib.load(next((tmp_path / "pred" / name).glob("*.nii.gz")))
        assert written.ndim == 3  # a 3D label map, also from the MSD's 4D images
        values = set(np.unique(np.asarray(written.dataobj)).tolist())
        assert values <= set(get_convention({"brats": "brats2017", "brats2024": "brats2023"}.get(name, "msd")).labels)
        summary = evaluate_dirs(tmp_path / "pred" / name, truths[name], tmp_path / "scores" / name, hd95=True)
        assert not summary["missing"] and not summary["invalid"]
        rows = csv.DictReader((tmp_path / "scores" / name / "per_case.csv").open())
        figures[name] = {(_original_id(name, roots[name], r["case"]), r["region"]): r for r in rows}
    for name in ("msd", "nnunet", "brats2024"):
        for key, row in figures["brats"].items():
            for column in ("dice", "hd95", "sensitivity", "ppv", "lesion_dice"):
                assert float(figures[name][key][column]) == pytest.approx(float(row[column]), abs=1e-6), (name, key)
    assert {r for _, r in figures["brats2024"]} == {"wt", "tc", "et", "netc", "snfh", "rc"}  # as BraTS 2024 scores


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cases_in_every_layout_train_and_score_as_in_the_brats_layout(tmp_path: Path, cache_dir: Path) -> None:
    """Three real BraTS 2018 cases converted: a debug-size training on each layout, and predict -> evaluate equal
    to the BraTS layout's figures (the must-show of issue 32)."""
    src = shared("brats2018")
    conv = _converter()
    brats = _brats_copy(src, tmp_path / "brats", 3)
    cases = sorted(brats.iterdir())
    roots = {
        "msd": conv.write_msd(cases, tmp_path / "out"),
        "nnunet": conv.write_nnunet(cases, tmp_path / "out"),
        "brats2024": conv.write_brats2024(cases, tmp_path / "out", cavity=True),
    }
    from brats_lightning.training.train import train

    trained = {}
    for name, root in {"brats": brats, **roots}.items():
        out = tmp_path / "run" / name
        cfg = compose(_debug_training(root, tmp_path / "cache", "seed=3"), output_dir=str(out))
        trained[name] = train(cfg)["best_ckpt"]
    ckpt = trained["brats"]
    inputs, truths = _images_and_truths(brats, roots)
    scores = {}
    for name in inputs:
        cfg = {"ckpt_path": str(ckpt), "input_dir": str(inputs[name]), "device": "cpu", "precision": "fp32",
               "num_workers": 0, "output_dir": str(tmp_path / "pred" / name)}  # fmt: skip
        assert len(predict_dir(OmegaConf.create(cfg))["done"]) == 3
        scores[name] = evaluate_dirs(tmp_path / "pred" / name, truths[name], tmp_path / "scores" / name)
    for name in ("msd", "nnunet", "brats2024"):
        for r in REGIONS:
            for m in ("dice", "hd95", "lesion_dice"):
                got, want = scores[name]["metrics"][r][m]["mean"], scores["brats"]["metrics"][r][m]["mean"]
                assert got == pytest.approx(want, abs=1e-6), (name, r, m)
    print(json.dumps({n: {r: s["metrics"][r]["dice"]["mean"] for r in s["metrics"]} for n, s in scores.items()}))
