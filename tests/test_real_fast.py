"""real_fast's building blocks (issue 15): tumour-centred sampling, the region Dice loss, the time-budget
schedule, and a single-fold run's clean-up and test-time flips tuned on its validation cases and carried
by best.ckpt (callbacks=tuned). The cross-validation itself: tests/test_crossval.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brats_lightning.callbacks.budget import BudgetSchedule, budget_factor
from brats_lightning.callbacks.postprocess import TunePostprocess
from brats_lightning.data.datasets import SliceDataset, crop_offsets, window_holding
from brats_lightning.data.labels import get_convention
from brats_lightning.errors import ConfigError
from brats_lightning.inference.cleanup import candidates, choose_within_tolerance, is_noop, remove_small_components
from brats_lightning.modules.losses import SegmentationLoss

# -- sampling -------------------------------------------------------------------------------------


def test_window_holding_draws_every_valid_window_and_only_those() -> None:
    rng = np.random.default_rng(0)
    for n, s in [(10, 4), (4, 10), (7, 7), (1, 3)]:
        free = n - s
        for p in range(n):
            # brute force: offsets within the image (or the padding) whose window holds p
            valid = {o for o in range(min(0, free), max(0, free) + 1) if o <= p < o + s}
            seen = {window_holding([p], [s], [n], rng)[0] for _ in range(400)}
            assert seen == valid, (n, s, p)


@pytest.fixture(scope="module")
def train_cases(tiny_dm_kwargs: dict) -> list:
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(**tiny_dm_kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_cases


def _draw(cases: list, fraction: float, epochs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    ds = SliceDataset(cases, (24, 24), batch_size=len(cases), augment=True, seed=0, tumour_fraction=fraction)
    images = np.zeros((len(ds), ds.channels, 24, 24), np.float16)
    labels = np.zeros((len(ds), 24, 24), np.uint8)
    out_l = []
    for epoch in range(epochs):
        ds.fill([(epoch, i) for i in range(len(ds))], [images, labels])
        out_l.append(labels.copy())
    return images, np.concatenate(out_l)


def test_tumour_sampling_puts_tumour_in_every_window_and_favours_the_small_classes(train_cases: list) -> None:
    _, natural = _draw(train_cases, 0.0)
    _, tumour = _draw(train_cases, 1.0)
    has = lambda labels, k: (labels == k).reshape(len(labels), -1).any(1).mean()  # noqa: E731
    assert has(tumour > 0, True) == 1.0  # every window holds tumour
    assert has(natural > 0, True) < 0.9  # the natural draw does not
    # classes drawn uniformly: enhancing tumour (class 3) is in far more windows than naturally
    assert has(tumour, 3) > has(natural, 3) + 0.2
    _, half = _draw(train_cases, 0.5)
    assert has(natural > 0, True) < has(half > 0, True) < 1.0


def test_without_tumour_sampling_the_windows_are_the_papers(train_cases: list) -> None:
    ds = SliceDataset(train_cases, (24, 24), batch_size=4, augment=True, seed=3, tumour_fraction=0.0)
    images = np.zeros((4, ds.channels, 24, 24), np.float16)
    labels = np.zeros((4, 24, 24), np.uint8)
    ds.fill([(2, i) for i in range(4)], [images, labels])
    for k in range(4):
        ci, z = ds.index[k]
        case = train_cases[ci]
        ox, oy = crop_offsets((24, 24), case.shape[2:], np.random.default_rng((3, 2, k)))
        expected = np.zeros((24, 24), np.uint8)
        src = np.asarray(case.label[z])
        x0, y0 = max(ox, 0), max(oy, 0)
        part = src[x0 : ox + 24, y0 : oy + 24]
        expected[x0 - ox : x0 - ox + part.shape[0], y0 - oy : y0 - oy + part.shape[1]] = part
        np.testing.assert_array_equal(labels[k], expected)


def test_bad_tumour_fraction_is_a_config_error(tiny_dm_kwargs: dict) -> None:
    from brats_lightning.data.datamodule import BratsDataModule

    with pytest.raises(ConfigError, match="tumour_fraction"):
        BratsDataModule(**tiny_dm_kwargs, tumour_fraction=1.5)


# -- loss -----------------------------------------------------------------------------------------


def test_ce_is_the_papers_cross_entropy_and_ce_dice_adds_the_region_soft_dice() -> None:
    conv = get_convention("brats2017")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, 11, generator=g)
    target = torch.randint(0, 4, (3, 9, 11), generator=g)
    ce = SegmentationLoss(conv, "ce")(logits, target)
    assert torch.allclose(ce, F.cross_entropy(logits, target))
    # independent reference: numpy soft Dice over the batch of the three regions (sums of classes)
    p = torch.softmax(logits, 1).numpy().astype(np.float64)
    t = target.numpy()
    dices = []
    for classes in ([1, 2, 3], [1, 3], [3]):  # wt, tc, et as internal classes of brats2017 (1, 2, 4)
        pr, gr = p[:, classes].sum(1), np.isin(t, classes).astype(np.float64)
        dices.append((2 * (pr * gr).sum() + 1e-5) / (pr.sum() + gr.sum() + 1e-5))
    expected = F.cross_entropy(logits, target).item() + 0.5 * (1 - np.mean(dices))
    got = SegmentationLoss(conv, "ce_dice", dice_weight=0.5)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        SegmentationLoss(conv, "focal")


def test_a_bad_loss_name_is_a_config_error() -> None:
    from brats_lightning.modules.fcn import FCNModule

    with pytest.raises(ConfigError, match="model.loss"):
        FCNModule(4, 4, width=0.25, loss="dice_only")


# -- schedule -------------------------------------------------------------------------------------


def test_budget_factor_warms_up_then_anneals_to_the_floor() -> None:
    assert budget_factor(0.0, 0.1, 0.01) == pytest.approx(0.01)
    assert budget_factor(0.1, 0.1, 0.01) == pytest.approx(1.0)
    assert budget_factor(0.55, 0.1, 0.01) == pytest.approx(0.505)  # half-way through the cosine
    assert budget_factor(1.0, 0.1, 0.01) == pytest.approx(0.01)
    assert budget_factor(2.0, 0.1, 0.01) == pytest.approx(0.01)
    after = [budget_factor(x, 0.1, 0.01) for x in np.linspace(0.1, 1, 50)]
    assert all(a >= b for a, b in itertools.pairwise(after))


class _RecordLR(BudgetSchedule):
    """The schedule, recording (progress, lr) at every step."""

    def __init__(self) -> None:
        super().__init__(warmup=0.0, floor=0.0)
        self.seen: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        before = self.progress(trainer)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.seen.append((before, self.progress(trainer), trainer.optimizers[0].param_groups[0]["lr"]))


def test_the_schedule_follows_the_time_spent_in_a_real_run(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    rec = _RecordLR()
    model = FCNModule(4, 4, width=0.25, lr=0.01, test_hd95=False)
    trainer = tiny_trainer(tmp_path, epochs=-1, callbacks=[rec], max_time={"seconds": 6})
    trainer.fit(model, datamodule=BratsDataModule(**tiny_dm_kwargs))
    before, after, lrs = np.array(rec.seen).T
    assert len(lrs) > 5 and np.all(np.diff(before) > 0)
    # (a step may start just after the budget ran out, before Lightning stops: the schedule holds its end)
    cosine = lambda p: 0.01 * 0.5 * (1 + np.cos(np.pi * np.minimum(p, 1.0)))  # noqa: E731
    # the rate set at each step is the cosine of the budget's fraction spent at that moment
    assert np.all(cosine(after) <= lrs + 1e-12) and np.all(lrs <= cosine(before) + 1e-12)
    assert lrs[-1] < 0.1 * lrs[0]  # annealed by the end of the budget


def test_a_schedule_without_a_time_budget_is_a_config_error(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.modules.fcn import FCNModule

    trainer = tiny_trainer(tmp_path, callbacks=[BudgetSchedule()], limit_train_batches=1)
    with pytest.raises(ConfigError, match="max_time"):
        trainer.fit(FCNModule(4, 4, width=0.25), datamodule=BratsDataModule(**tiny_dm_kwargs))


# -- clean-up tuning ------------------------------------------------------------------------------


def test_largest_only_keeps_the_largest_component() -> None:
    seg = np.zeros((30, 30, 30), np.uint8)
    seg[2:12, 2:12, 2:12] = 2
    seg[20:25, 20:25, 20:25] = 1
    out = remove_small_components(seg, min_volume_mm3=0, min_slices=1, largest_only=True)
    assert out[20:25, 20:25, 20:25].sum() == 0 and (out == seg)[:15, :15, :15].all()


def test_the_strongest_clean_up_within_the_tolerance_is_chosen() -> None:
    assert choose_within_tolerance([0.80, 0.85, 0.849, 0.70], tolerance=0.002) == 2
    assert choose_within_tolerance([0.80, 0.85, 0.847, 0.70], tolerance=0.002) == 1
    none = {"min_volume_mm3": 0.0, "min_slices": 0, "largest_only": False, "et_min_volume_mm3": 0.0}
    assert candidates([500, 100], largest_only=True) == [
        none,
        {**none, "min_volume_mm3": 100.0, "min_slices": 1},
        {**none, "min_volume_mm3": 500.0, "min_slices": 1},
        {**none, "largest_only": True},
    ]
    assert is_noop(None) and is_noop(none) and not is_noop({"largest_only": True})


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
