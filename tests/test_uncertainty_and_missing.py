"""What a clinician needs (issue 23): uncertainty maps and case scores, and cases that lack a sequence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import discover_cases
from brats_lightning.inference.uncertainty import agreement, auroc, normalised_entropy, spearman
from brats_lightning.predict import predict_dir


def _cfg(**kw) -> dict:
    base = {"postprocess": False, "device": "cpu", "batch_size": 8, "num_workers": 0, "tta": False, "precision": "fp32"}
    return OmegaConf.create({**base, **kw})


def test_the_measures_against_their_definitions() -> None:
    conv = get_convention("brats2017")
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]).view(2, 4, 1)
    torch.testing.assert_close(normalised_entropy(probs)[:, 0], torch.tensor([1.0, 0.0]))
    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 3
    b = a.copy()
    assert agreement([a, a], conv) == 1.0 and agreement([a], conv) is None
    b[1] = 2  # half the enhancing tumour becomes edema: WT Dice 1, TC and ET Dice 2/3
    assert agreement([a, b], conv) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    rng = np.random.default_rng(0)
    scores, positives = rng.random(200), rng.random(200) < 0.3
    pairs = [(s_p > s_n) + 0.5 * (s_p == s_n) for s_p in scores[positives] for s_n in scores[~positives]]
    assert auroc(scores, positives) == pytest.approx(np.mean(pairs))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_predict_writes_an_uncertainty_map_and_ranks_cases_by_agreement(
    tmp_path: Path, trained_ckpt: Path, well_trained_ckpt: Path, synthetic_root: Path
) -> None:
    inp = tmp_path / "in"
    for case in discover_cases(synthetic_root)[:2]:
        shutil.copytree(Path(case.images["flair"]).parent, inp / case.case_id)
    ckpts = [str(trained_ckpt), str(well_trained_ckpt)]
    report = predict_dir(_cfg(ckpt_path=ckpts, input_dir=str(inp), output_dir=str(tmp_path / "ens"), uncertainty=True))
    conv = get_convention("brats2017")
    # the members' own predictions, predicted apart: their agreement, computed another way
    alone = []
    for i, ckpt in enumerate(ckpts):
        predict_dir(_cfg(ckpt_path=ckpt, input_dir=str(inp), output_dir=str(tmp_path / f"m{i}")))
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


def test_modality_dropout_zeroes_whole_modalities_and_never_all(tiny_dm_kwargs: dict) -> None:
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(**tiny_dm_kwargs, symmetry=True, modality_dropout=0.4)
    x = torch.randn(2000, 8, 4, 4)
    out = dm.drop_modalities(x, torch.Generator().manual_seed(0))
    zero = (out == 0).flatten(2).all(2)  # (N, channels)
    images, maps = zero[:, :4], zero[:, 4:]
    assert torch.equal(images, maps)  # a modality goes with its symmetry map
    assert not images.all(1).any()  # one is always kept
    assert abs(float(images.float().mean()) - 0.4) < 0.04
    kept = ~zero
    assert torch.equal(out[kept.view(2000, 8, 1, 1).expand_as(x)], x[kept.view(2000, 8, 1, 1).expand_as(x)])
    with pytest.raises(Exception, match=r"data.modality_dropout: Input should be less than 1 \(got 1.0\)"):
        BratsDataModule(**tiny_dm_kwargs, modality_dropout=1.0)


def test_predict_fills_a_missing_sequence_only_for_a_model_trained_without_it(
    tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer, trained_ckpt: Path, synthetic_root: Path
) -> None:
    import pytorch_lightning as pl

    from brats_lightning.data.datamodule import BratsDataModule
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
            _cfg(ckpt_path=str(tmp_path / "ck" / "last.ckpt"), input_dir=str(inp), output_dir=str(tmp_path / "o"))
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
    refused = predict_dir(_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(tmp_path / "p")))
    assert refused["done"] == [whole.case_id]
    reason = refused["failed"][case.case_id]
    assert "missing t1 image" in reason and "not trained for missing sequences: data.modality_dropout" in reason
