"""brats_lightning.callbacks.postprocess: the clean-up and flips tuned on validation cases and stored in the
checkpoint.
"""

from __future__ import annotations

import pytest

from brats_lightning.callbacks.postprocess import TunePostprocess
from brats_lightning.errors import ConfigError


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory, tiny_dm_kwargs: dict) -> dict:
    """A tiny FCN trained with the tuning callback (lr flips tried, any gain keeps them)."""
    import pytorch_lightning as pl

    from brats_lightning.callbacks.checkpoint import BestCheckpoint
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule
    from tests.helpers import tiny_trainer

    out = tmp_path_factory.mktemp("tuned")
    pl.seed_everything(0)
    dm = BratsDataModule(symmetry=True, **tiny_dm_kwargs)
    model = FCNModule(8, 4, width=0.25, test_hd95=False, loss="ce_dice")
    best = BestCheckpoint(dirpath=out, filename="best", monitor="val/dice_mean", mode="max")
    tune = TunePostprocess(min_volumes_mm3=[5, 50], tta_min_gain=-1.0)
    trainer = tiny_trainer(out, 2, [best, tune], limit_train_batches=6, limit_val_batches=None, precision="32")
    trainer.fit(model, datamodule=dm)
    return {"ckpt": out / "best.ckpt", "tune": tune, "model": model, "dm": dm, "trainer": trainer}


def test_tuning_scores_the_best_checkpoint_and_stores_its_choice_in_it(tuned_run: dict) -> None:
    from brats_lightning.files import read_checkpoint
    from brats_lightning.load.checkpoint import load_module

    result = tuned_run["tune"].result
    ckpt = read_checkpoint(tuned_run["ckpt"])
    assert ckpt["postprocess_tuning"] == result
    assert ckpt["postprocess"] == result["postprocess"] and ckpt["tta_flips"] == ["lr"]  # any gain keeps them
    table = result["table"]
    assert len(table) == 2 * 4 and result["cases"] == len(tuned_run["dm"].val_cases)
    # the untouched row is what validation measured for the best epoch (computed another way: torch Dice)
    best_val = max(h["val/dice_mean"] for h in read_checkpoint(tuned_run["ckpt"])["val_history"])
    plain = next(r for r in table if r["postprocess"] is None and not r["tta_flips"])
    assert plain["dice_mean"] == pytest.approx(best_val, abs=1e-6)
    chosen = [r for r in table if r["tta_flips"] == ["lr"]]
    assert max(r["dice_mean"] for r in chosen) - 0.002 <= next(
        r["dice_mean"] for r in chosen if r["postprocess"] == result["postprocess"]
    )
    model, _ = load_module(tuned_run["ckpt"])
    assert model.postprocess == (dict(result["postprocess"]) if result["postprocess"] else None)
    assert model.tta_flips == ["lr"]


def test_predict_applies_the_tuned_choice_unless_told_otherwise(tuned_run: dict) -> None:
    from brats_lightning.load.predictor import load_predictor
    from brats_lightning.modules.ensemble import EnsembleModule
    from brats_lightning.predict.options import flips_option

    auto, _ = load_predictor(tuned_run["ckpt"], flips_option({"tta": "auto"}))
    assert isinstance(auto, EnsembleModule) and auto.flips == ((2,),)
    plain, _ = load_predictor(tuned_run["ckpt"], flips_option({"tta": False}))
    assert not isinstance(plain, EnsembleModule)
    with pytest.raises(ConfigError, match="tta must be"):
        flips_option({"tta": "sometimes"})
