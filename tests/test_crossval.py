"""experiment=real_fast as a cross-validation (issue 21): folds by site, out-of-fold figures, the recipe's options."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brats_lightning.crossval.options import fold_seconds
from brats_lightning.data.groups import case_groups
from brats_lightning.data.labels import REGIONS, get_convention
from brats_lightning.data.splits import make_splits
from brats_lightning.errors import CheckpointError, ConfigError, DataError
from brats_lightning.inference.cleanup import (
    apply_cleanup,
    candidates,
    choose_cleanup,
    enhancing_to_necrosis,
    et_rule_candidates,
)
from brats_lightning.inference.decision import decide, region_chain
from brats_lightning.inference.volume import with_context

BRATS18 = [
    "Brats18_2013_11_1",
    "Brats18_2013_20_1",
    "Brats18_2013_3_1",
    "Brats18_CBICA_ABM_1",
    "Brats18_CBICA_ALU_1",
    "Brats18_CBICA_AME_1",
    "Brats18_TCIA01_201_1",
    "Brats18_TCIA01_378_1",
    "Brats18_TCIA01_499_1",
    "Brats18_TCIA02_135_1",
    "Brats18_TCIA02_370_1",
    "Brats18_TCIA03_265_1",
    "Brats18_TCIA10_628_1",
    "Brats18_TCIA10_637_1",
]

# -- folds by site --------------------------------------------------------------------------------


def test_a_case_s_site_comes_from_its_id_a_pattern_or_a_csv(tmp_path: Path) -> None:
    groups = case_groups(BRATS18)
    assert groups["Brats18_2013_3_1"] == "2013" and groups["Brats18_TCIA10_637_1"] == "TCIA10"
    assert sorted(set(groups.values())) == ["2013", "CBICA", "TCIA01", "TCIA02", "TCIA03", "TCIA10"]
    # ids without a site (BraTS 2020+, synthetic): one group, never half a guess
    assert set(case_groups(["BraTS20_Training_001", "Brats18_CBICA_ABM_1"]).values()) == {"all"}
    assert case_groups(["A-1", "B-2"], r"^([A-Z])-") == {"A-1": "A", "B-2": "B"}
    with pytest.raises(DataError, match=r"case c3: data.groups='\^\(\[A-Z\]\)-' does not match"):
        case_groups(["A-1", "c3"], r"^([A-Z])-")
    with pytest.raises(ConfigError, match="exactly one capture group"):
        case_groups(["A-1"], r"^[A-Z]-")
    table = tmp_path / "sites.csv"
    table.write_text("case,group\nA-1,north\nB-2,south\n")
    assert case_groups(["A-1", "B-2"], str(table)) == {"A-1": "north", "B-2": "south"}
    with pytest.raises(DataError, match=r"sites.csv: no group for case\(s\) \['C-3'\]"):
        case_groups(["A-1", "C-3"], str(table))


def _legacy_split(ids: list[str], seed: int, test_fraction: float, k: int) -> tuple[list, list]:
    """The split before sites were known (a seeded shuffle dealt in turn): the reference for one group."""
    ordered = sorted(set(ids))
    random.Random(seed).shuffle(ordered)
    n = int(round(test_fraction * len(ordered)))
    return sorted(ordered[:n]), [sorted(ordered[n:][i::k]) for i in range(k)]


def test_folds_hold_every_site_in_proportion_and_one_group_splits_as_before() -> None:
    groups = case_groups(BRATS18)
    for seed in range(20):
        split = make_splits(BRATS18, seed, 0.0, 5, groups)
        assert sorted(c for f in split["folds"] for c in f) == sorted(BRATS18)
        assert sorted(len(f) for f in split["folds"]) == [2, 3, 3, 3, 3]
        for fold in split["folds"]:  # no site twice in a fold: every site has at most 3 cases for 5 folds
            sites = [groups[c] for c in fold]
            assert len(sites) == len(set(sites)), (seed, fold)
    # the BRATS 2013 cases no longer fall into one fold by chance (issue 21: fold 0 was all three)
    assert all(len({groups[c] for c in f}) == len(f) for f in make_splits(BRATS18, 0, 0.0, 5, groups)["folds"])
    synthetic = [f"Synth_{i:04d}" for i in range(24)]
    for seed in range(5):
        for fraction in (0.0, 0.2, 0.4):
            new = make_splits(synthetic, seed, fraction, 5, case_groups(synthetic))
            assert (new["test"], new["folds"]) == _legacy_split(synthetic, seed, fraction, 5)


def test_leave_one_site_out_makes_one_fold_per_site() -> None:
    groups = case_groups(BRATS18)
    split = make_splits(BRATS18, 0, 0.0, 5, groups, "site")
    assert split["num_folds"] == 6
    assert sorted({groups[c] for c in f}.pop() for f in split["folds"]) == sorted(set(groups.values()))
    assert all(len({groups[c] for c in f}) == 1 for f in split["folds"])
    with pytest.raises(DataError, match="data.split=site needs cases of at least two sites"):
        make_splits([f"Synth_{i}" for i in range(6)], 0, 0.0, 5, None, "site")


# -- the clean-up rule ----------------------------------------------------------------------------


def test_a_clean_up_is_chosen_only_when_it_beats_none_by_more_than_the_folds_spread() -> None:
    folds = np.repeat(np.arange(5), 4)
    base = np.linspace(0.5, 0.9, 20)
    steady = base + 0.02  # +0.02 on every case: consistent
    erratic = base + np.where(folds == 0, 0.40, -0.05)  # a larger mean gain, all from one fold
    scores = np.stack([base, erratic, steady], axis=1)
    chosen, figures = choose_cleanup(scores, folds, np.ones(20, bool))
    assert chosen == 2 and figures["gain"][1] > figures["gain"][2]
    assert figures["gain"][1] < figures["se"][1]  # the erratic one's gain is inside its spread
    # the choice for fold 0's cases is made without them: the erratic candidate's gain is then negative
    assert choose_cleanup(scores, folds, folds != 0)[0] == 2
    # nothing gains: no clean-up
    assert choose_cleanup(np.stack([base, base - 0.01], axis=1), folds, np.ones(20, bool))[0] == 0


def test_the_candidates_start_with_no_clean_up_and_the_et_rule_is_the_brats_rule() -> None:
    comps = candidates([500, 100], largest_only=True)
    assert comps[0] == {"min_volume_mm3": 0.0, "min_slices": 0, "largest_only": False, "et_min_volume_mm3": 0.0}
    assert [c["min_volume_mm3"] for c in comps[1:3]] == [100.0, 500.0] and comps[-1]["largest_only"]
    rules = et_rule_candidates(comps[1], [200])
    assert [r["et_min_volume_mm3"] for r in rules] == [0.0, 200.0] and rules[1]["min_volume_mm3"] == 100.0
    conv = get_convention("brats2017")  # internal: 0 background, 1 NCR, 2 edema, 3 enhancing
    classes = np.zeros((20, 20, 20), np.uint8)
    classes[2:10, 2:10, 2:10] = 2
    classes[4:6, 4:6, 4:6] = 3  # 8 voxels of enhancing tumour at 2 mm: 64 mm3
    spacing = (2.0, 2.0, 2.0)
    relabelled = enhancing_to_necrosis(classes, conv, spacing, 100.0)
    assert (relabelled == 3).sum() == 0 and (relabelled == 1).sum() == 8 and (classes == 3).sum() == 8
    assert enhancing_to_necrosis(classes, conv, spacing, 50.0) is classes  # 64 mm3 >= 50: kept
    classes[15, 15, 15] = 2  # a lone edema voxel
    cleaned = apply_cleanup(classes, spacing, conv, {**comps[1], "et_min_volume_mm3": 100.0})
    assert cleaned[15, 15, 15] == 0 and (cleaned == 1).sum() == 8
    assert apply_cleanup(classes, spacing, conv, comps[0]) is classes  # the first candidate changes nothing


def test_fold_time_is_an_even_share_of_what_is_left_less_its_inference() -> None:
    assert fold_seconds(5000.0, 5, 100.0) == 900.0
    assert fold_seconds(100.0, 5, 100.0) == 30.0  # never less than a minimum


# -- region outputs -------------------------------------------------------------------------------


def test_region_outputs_nest_and_are_decided_by_region_thresholds() -> None:
    conv = get_convention("brats2017")
    logits = torch.randn(4, 3, 9, 7, generator=torch.Generator().manual_seed(0)) * 3
    probs = region_chain(logits, conv)
    torch.testing.assert_close(probs.sum(1), torch.ones(4, 9, 7))
    assert float(probs.min()) >= 0
    s = torch.sigmoid(logits)
    q_wt, q_tc, q_et = s[:, 0], s[:, 0] * s[:, 1], s[:, 0] * s[:, 1] * s[:, 2]
    torch.testing.assert_close(1 - probs[:, 0], q_wt)
    torch.testing.assert_close(probs[:, 1] + probs[:, 3], q_tc)
    torch.testing.assert_close(probs[:, 3], q_et)
    expected = torch.zeros(4, 9, 7, dtype=torch.long)  # nnU-Net's rule, by hand
    expected[q_wt > 0.5] = 2
    expected[q_tc > 0.5] = 1
    expected[q_et > 0.5] = 3
    assert torch.equal(decide(probs, conv, "regions"), expected)
    assert torch.equal(decide(probs, conv, "argmax"), probs.argmax(1))
    with pytest.raises(ValueError, match="brats2013 has 5 classes"):
        region_chain(logits, get_convention("brats2013"))


def test_the_region_loss_is_bce_plus_soft_dice_of_the_nested_regions() -> None:
    from brats_lightning.modules.losses import SegmentationLoss

    conv = get_convention("brats2017")
    logits = torch.randn(3, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 4, (3, 12, 10), generator=torch.Generator().manual_seed(2))
    s = torch.sigmoid(logits)
    q = torch.stack([s[:, 0], s[:, 0] * s[:, 1], s[:, 0] * s[:, 1] * s[:, 2]], 1)
    truth = torch.stack([(target > 0), (target == 1) | (target == 3), target == 3], 1).float()
    bce = F.binary_cross_entropy(q, truth)
    inter, total = (q * truth).sum((0, 2, 3)), (q + truth).sum((0, 2, 3))
    dice = (1 - (2 * inter + 1e-5) / (total + 1e-5)).mean()  # batch Dice per region, averaged
    loss = SegmentationLoss(conv, "dice_bce", dice_weight=1.0)(logits, target)
    torch.testing.assert_close(loss, bce + dice, rtol=1e-4, atol=1e-5)


def test_region_outputs_need_the_region_loss_and_a_nested_convention() -> None:
    from brats_lightning.modules.fcn import FCNModule

    with pytest.raises(ConfigError, match="region outputs train with loss=dice_bce"):
        FCNModule(4, 4, width=0.25, outputs="regions", loss="ce")
    with pytest.raises(ConfigError, match="model.outputs=regions: region-based outputs need"):
        FCNModule(4, 5, width=0.25, outputs="regions", loss="dice_bce", convention="brats2013")
    with pytest.raises(ConfigError, match="model.arch must be one of"):
        FCNModule(4, 4, arch="resnet")


@pytest.mark.parametrize("arch, kwargs", [("unet", {"width": 0.25}), ("dynunet", {"width": 0.25, "levels": 4})])
def test_the_decoder_nets_segment_whole_slices_of_any_size(arch: str, kwargs: dict) -> None:
    from brats_lightning.modules.fcn import FCNModule

    model = FCNModule(8, 4, arch=arch, outputs="regions", loss="dice_bce", **kwargs).eval()
    x = torch.randn(2, 8, 37, 45)  # not a multiple of the pooling: padded and cropped back
    with torch.no_grad():
        probs = model.predict_slices(x)
    assert probs.shape == (2, 4, 37, 45)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 45))
    # batch norms folded for inference: the same probabilities
    with torch.no_grad():
        fused = model.prepare_for_inference().predict_slices(x)
    torch.testing.assert_close(fused, probs, rtol=1e-4, atol=1e-5)


def test_vgg16_weights_initialise_the_unet_encoder() -> None:
    from brats_lightning.nets.fcn import VGG16_BLOCKS, load_vgg16_weights
    from brats_lightning.nets.unet import ShenUNet

    net = ShenUNet(in_channels=4, num_classes=3)
    state, i, prev = {}, 0, 3
    for block in VGG16_BLOCKS[:3]:
        for c in block:
            state[f"features.{i}.weight"] = torch.full((c, prev, 3, 3), float(i))
            state[f"features.{i}.bias"] = torch.zeros(c)
            i, prev = i + 2, c
    assert load_vgg16_weights(net, state) == 7  # type: ignore[arg-type]
    assert float(net.downsampling_convs()[1].weight.mean()) == 2.0


# -- 2.5D -----------------------------------------------------------------------------------------


def test_context_slices_are_the_neighbours_in_order_with_zeros_beyond_the_volume() -> None:
    volume = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 2, 3, 3).contiguous()
    out = with_context(volume, torch.tensor([0, 2, 4]), 1)
    assert out.shape == (3, 6, 3, 3)
    assert out[:, ::2, 0, 0].tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 0]]  # slice z-1, z, z+1 (zeros outside)
    assert torch.equal(with_context(volume, torch.tensor([1]), 0), volume[1:2])


def test_training_slices_carry_the_same_context_as_inference(tiny_dm_kwargs: dict) -> None:
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.data.datasets import SliceDataset

    dm = BratsDataModule(**tiny_dm_kwargs, context_slices=1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.in_channels == 12 and dm.describe()["context_slices"] == 1
    case = dm.train_cases[0]
    ds = SliceDataset([case], case.shape[2:], batch_size=1, augment=False, context=1)
    z0 = case.brain_slices[0]
    i = case.brain_slices.index(z0)
    image = np.zeros((1, 12, *case.shape[2:]), np.float16)
    label = np.zeros((1, *case.shape[2:]), np.uint8)
    ds.fill([(0, i)], [image, label])
    expected = with_context(torch.from_numpy(np.asarray(case.image)), torch.tensor([z0]), 1)
    np.testing.assert_array_equal(image, expected.numpy())
    assert dm.intensity_channels == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert BratsDataModule(**tiny_dm_kwargs, symmetry=True, context_slices=1).intensity_channels == [
        0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19,
    ]  # fmt: skip


# -- augmentation ---------------------------------------------------------------------------------


def test_intensity_augmentation_changes_only_the_mr_channels_inside_the_brain() -> None:
    from brats_lightning.data.augment import SliceAugment

    x = torch.randn(16, 8, 40, 48)
    x[:, :, :6] = 0  # background rows
    y = torch.randint(0, 4, (16, 40, 48))
    plain = SliceAugment(prob=0.0, flip_prob=0.0)
    strong = SliceAugment(prob=0.0, flip_prob=0.0, intensity=True, strength=2.0)
    xa, ya = strong(x, y, torch.Generator().manual_seed(0), intensity_channels=[0, 1, 2, 3])
    xp, _ = plain(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(ya, y) and torch.equal(xa[:, 4:], xp[:, 4:])  # symmetry maps, labels untouched
    assert torch.equal(xa[:, :, :6], torch.zeros_like(xa[:, :, :6]))  # the background stays zero
    changed = (xa[:, :4] - xp[:, :4]).abs().flatten(1).amax(1) > 1e-3
    assert 4 <= int(changed.sum()) < 16  # drawn per slice
    xb, _ = strong(x, y, torch.Generator().manual_seed(0), intensity_channels=[0, 1, 2, 3])
    assert torch.equal(xa, xb)


def test_elastic_deformation_moves_image_and_label_together() -> None:
    from brats_lightning.data.augment import SliceAugment

    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    y = (((yy - 20) / 10.0) ** 2 + ((xx - 30) / 14.0) ** 2 < 1).long().repeat(8, 1, 1)
    x = y[:, None].float().repeat(1, 2, 1, 1)
    aug = SliceAugment(prob=0.0, flip_prob=0.0, elastic_prob=1.0, elastic_alpha=4.0)
    xa, ya = aug(x, y, torch.Generator().manual_seed(1))
    for k in range(8):
        inter = ((xa[k, 0] > 0.5) & ya[k].bool()).sum()
        assert float(inter / ((xa[k, 0] > 0.5) | ya[k].bool()).sum()) > 0.9
    assert sum(not torch.equal(ya[k], y[k]) for k in range(8)) >= 6
    with pytest.raises(ValueError, match="elastic_prob must be in"):
        SliceAugment(elastic_prob=1.5)


# -- the command ----------------------------------------------------------------------------------


def _oof_fold(run: Path, case: str) -> int:
    with np.load(run / "oof" / f"{case}.npz") as z:
        return int(z["fold"])


def test_real_fast_is_a_cross_validation_with_out_of_fold_figures_and_an_ensemble_predictor(
    tmp_path: Path, synthetic_root: Path, cache_dir: Path
) -> None:
    import csv
    import shutil

    import nibabel as nib

    from brats_lightning import predict
    from brats_lightning.data.layouts import discover_cases
    from brats_lightning.evaluation.metrics import dice
    from brats_lightning.files import read_checkpoint
    from brats_lightning.load.runs import find_checkpoints
    from brats_lightning.training.train import main as train_main
    from tests.helpers import run_main

    run = tmp_path / "run"
    args = [
        "experiment=real_fast",
        f"data.root={synthetic_root}",
        f"paths.cache_dir={cache_dir}",
        "data.crop_size=[48,56]",
        "data.batch_size=4",
        "data.num_folds=2",
        "data.test_fraction=0.25",
        "model.width=0.25",
        "budget_minutes=1.2",
        "reserve_minutes=0.2",
        "cv.tta_flips=[lr]",
        "cv.min_volumes_mm3=[100]",
        "cv.et_volumes_mm3=[100]",
        "cv.raw_weights=true",
        "callbacks.ema={_target_:pytorch_lightning.callbacks.EMAWeightAveraging,decay:0.99}",
        "cv.uncertainty=true",
        "cv.missing_modalities=[t1]",
        "logger=none",
        f"hydra.run.dir={run}",
    ]
    run_main(train_main, *args)
    metrics = json.loads((run / "metrics.json").read_text())
    folds_csv = {r["case"]: r for r in csv.DictReader((run / "cv" / "folds.csv").open())}
    rows = list(csv.DictReader((run / "cv" / "per_case.csv").open()))
    cases = sorted(folds_csv)
    # every case of the cross-validation once, scored out of fold by the model of its own fold
    assert sorted({r["case"] for r in rows}) == cases and len(rows) == 3 * len(cases) == 3 * 6
    for case, row in folds_csv.items():
        assert _oof_fold(run, case) == int(row["fold"])
        fold_model = read_checkpoint(run / f"fold_{row['fold']}" / "checkpoints" / "last.ckpt")
        assert fold_model["data_config"]["modalities"]  # a real fold model
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert summary["evaluation"].startswith("cross-validation") and summary["folds"] == 2
    # the figures: means of the per-case rows, under cv/ (not test/); Dice recomputed from the saved segmentations
    for region in REGIONS:
        assert metrics[f"cv/dice_{region}"] == pytest.approx(
            np.mean([float(r["dice"]) for r in rows if r["region"] == region]), abs=1e-5
        )
        assert f"cv/lesion_dice_{region}" in metrics and f"cv/hd95_{region}" in metrics
    conv = get_convention("brats2017")
    case = cases[0]
    with np.load(run / "oof" / f"{case}.npz") as z:
        single = z["classes_single"]
    label = np.load(next((cache_dir / "prepared").glob(f"*/{case}/label.npy")))
    pm, gm = conv.region_masks(single), conv.region_masks(label)
    assert "cv_single/dice_mean" in metrics and "cv_raw/dice_mean" in metrics  # EMA: raw weights beside
    assert "cv_missing_t1/dice_mean" in metrics  # and without T1
    assert 0.0 <= metrics["cv/uncertainty_voxel_auroc"] <= 1.0 and -1 <= metrics["cv/uncertainty_case_spearman"] <= 1
    unc_rows = list(csv.DictReader((run / "cv" / "uncertainty.csv").open()))
    assert sorted(r["case"] for r in unc_rows) == cases
    assert np.isfinite([dice(pm[r], gm[r]) for r in REGIONS]).all()
    # the clean-up: chosen per fold without the fold's cases, and the final choice in every fold model
    cleanup = json.loads((run / "cv" / "cleanup.json").read_text())
    assert set(cleanup["nested"]) == {"0", "1"} and cleanup["cases"] == len(cases)
    for k in range(2):
        model = read_checkpoint(run / f"fold_{k}" / "checkpoints" / "last.ckpt")
        assert model["postprocess"] == cleanup["final"] and model["tta_flips"] == ["lr"]
    # the held-out cases chose nothing: the ensemble's test, under test/
    assert {"test/dice_wt", "test/dice_mean"} <= set(metrics) and (run / "test" / "per_case.csv").is_file()
    test_cases = {r["case"] for r in csv.DictReader((run / "test" / "per_case.csv").open())}
    assert test_cases and not test_cases & set(cases)
    # within the budget: 1.2 minutes after data preparation (a fold trains at least 30 s)
    assert metrics["time/cv_s"] < 1.2 * 60 + 45
    # predict ckpt_path=<run>: the ensemble of the fold models, with the final clean-up and flips
    assert find_checkpoints(run) == [run / f"fold_{k}" / "checkpoints" / "last.ckpt" for k in range(2)]
    case_files = next(c for c in discover_cases(synthetic_root) if c.case_id in test_cases)
    inp = tmp_path / "in"
    shutil.copytree(Path(case_files.images["flair"]).parent, inp / case_files.case_id)
    run_main(predict.main, f"ckpt_path={run}", f"input_dir={inp}", f"output_dir={tmp_path / 'p'}",
             f"hydra.run.dir={tmp_path / 'pr'}")  # fmt: skip
    report = json.loads((tmp_path / "p" / "predict_report.json").read_text())
    assert report["done"] == [case_files.case_id]
    assert nib.load(tmp_path / "p" / f"{case_files.case_id}.nii.gz").shape == nib.load(case_files.label).shape
    # resumed in place: a run killed during its last fold keeps the finished folds and finishes the last
    state = json.loads((run / "cv_state.json").read_text())
    state["folds"]["1"]["done"] = False
    (run / "cv_state.json").write_text(json.dumps(state))
    for c in [c for c, r in folds_csv.items() if r["fold"] == "1"]:
        (run / "oof" / f"{c}.npz").unlink()
    (run / "metrics.json").unlink()
    fold0 = read_checkpoint(run / "fold_0" / "checkpoints" / "last.ckpt")["state_dict"]
    run_main(train_main, *args)
    again = json.loads((run / "metrics.json").read_text())
    for key, value in read_checkpoint(run / "fold_0" / "checkpoints" / "last.ckpt")["state_dict"].items():
        assert torch.equal(value, fold0[key]), key  # fold 0 was not trained again
    assert again["cv/fold1/steps"] == metrics["cv/fold1/steps"]  # fold 1 resumed at its end: no step more
    assert all((run / "oof" / f"{c}.npz").is_file() for c in cases)


def test_a_predictor_list_may_not_point_outside_its_run(tmp_path: Path) -> None:
    from brats_lightning.load.runs import find_checkpoints

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere.ckpt").write_bytes(b"x")
    (run / "predictor.json").write_text(json.dumps({"checkpoints": ["../elsewhere.ckpt"]}))
    with pytest.raises(CheckpointError, match=r"predictor.json: '../elsewhere.ckpt' is outside the run folder"):
        find_checkpoints(run)
    (run / "predictor.json").write_text(json.dumps({"checkpoints": "fold_0"}))
    with pytest.raises(CheckpointError, match="expected a list of checkpoints"):
        find_checkpoints(run)


@pytest.mark.parametrize("context", [0, 1, 2])
def test_a_missing_sequence_zeroes_its_image_and_map_in_the_prepared_case(context: int) -> None:
    """The out-of-fold pass with a sequence missing zeroes channels of the prepared case (images, then
    maps; 2.5D neighbours are stacked later), whatever the context: never an index past its channels."""
    from brats_lightning.crossval.oof import case_channels

    modalities = ["flair", "t1", "t1c", "t2"]
    cfg = {"modalities": modalities, "symmetry": {"enabled": True}, "context_slices": context}
    channels = case_channels(cfg)
    assert channels == {m: [i, i + 4] for i, m in enumerate(modalities)}
    assert case_channels({**cfg, "symmetry": {"enabled": False}}) == {m: [i] for i, m in enumerate(modalities)}
