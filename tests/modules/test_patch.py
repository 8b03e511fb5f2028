"""Tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from brats_lightning.callbacks.two_phase import TwoPhaseTraining
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.sampling import PatchSampler
from brats_lightning.errors import CheckpointError
from brats_lightning.modules.patch import PatchCNNModule, load_patch_net


def _epoch_lr_factors(module: PatchCNNModule, epochs: int) -> list[float]:
    """Learning rate of each epoch over the initial one, stepping the module's scheduler once per epoch."""
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"] / module.hparams.lr)
        opt.step()
        sched.step()
    return out


def test_momentum_and_lr_schedules() -> None:
    m = PatchCNNModule(
        "localpath", momentum=0.5, final_momentum=0.9, momentum_epochs=4, lr_decay=0.1, lr_decay_epochs=9
    )
    assert [round(m.momentum_at(e), 6) for e in (0, 2, 4, 10)] == [0.5, 0.7, 0.9, 0.9]
    # the rate of each epoch, as the optimiser sees it: linear decay to lr_decay over 9 epochs, then flat
    factors = _epoch_lr_factors(m, 21)
    assert [round(factors[e], 6) for e in (0, 3, 9, 20)] == [1.0, 0.7, 0.1, 0.1]
    e = PatchCNNModule("localpath", lr_schedule="exponential", lr_decay=0.5)
    assert _epoch_lr_factors(e, 4)[3] == pytest.approx(0.125)
    assert _epoch_lr_factors(PatchCNNModule("localpath", lr_schedule="constant"), 5) == [1.0] * 5
    with pytest.raises(ValueError, match="lr_schedule"):
        PatchCNNModule("localpath", lr_schedule="cosine")
    with pytest.raises(ValueError, match="patch_size=35"):
        PatchCNNModule("twopath", patch_size=35)


def test_predict_slices_is_per_pixel_and_a_distribution() -> None:
    m = PatchCNNModule("twopath", 4, 4).eval()
    x = torch.randn(3, 4, 20, 24)
    p = m.predict_slices(x)
    assert p.shape == (3, 4, 20, 24)
    torch.testing.assert_close(p.sum(1), torch.ones(3, 20, 24))
    # pixel (5, 7) = the 33x33 patch around it in the zero-padded slice
    patch = F.pad(x, (16, 16, 16, 16))[:1, :, 5 : 5 + 33, 7 : 7 + 33]
    torch.testing.assert_close(p[0, :, 5, 7], torch.softmax(m.net(patch), 1)[0, :, 0, 0], atol=1e-5, rtol=0)


def test_training_regularisation_max_norm_and_output_bias(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    dm = BratsDataModule(mode="patches", patches_per_epoch=64, **{**tiny_dm_kwargs, "batch_size": 32})
    model = PatchCNNModule("localpath", 4, 4, max_norm=0.05, l1=1e-4, l2=1e-3, inference_batch_size=8, test_hd95=False)
    seen = {}

    class Peek(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["bias"] = pl_module.net.output.bias.detach().clone()
            seen["momentum"] = trainer.optimizers[0].param_groups[0]["momentum"]

    trainer = tiny_trainer(tmp_path, 1, [Peek()], enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    freqs = torch.tensor(dm.label_frequencies())
    torch.testing.assert_close(torch.softmax(seen["bias"], 0), freqs / freqs.sum(), atol=1e-5, rtol=0)
    assert seen["momentum"] == 0.5
    for w in model.kernels():
        assert float(w.detach().flatten(1).norm(dim=1).max()) <= 0.05 + 1e-6
    assert "val/dice_mean" in trainer.callback_metrics


def _save_ckpt(path: Path, arch: str, seed: int) -> PatchCNNModule:
    torch.manual_seed(seed)
    m = PatchCNNModule(arch, 4, 4)
    with torch.no_grad():
        for p in m.net.parameters():
            p.normal_(0, 0.05)
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, path)
    return m


def test_average_cnn_from_checkpoints(tmp_path: Path) -> None:
    local = _save_ckpt(tmp_path / "local.ckpt", "localpath", 0).eval()
    glob = _save_ckpt(tmp_path / "global.ckpt", "globalpath", 1).eval()
    avg = PatchCNNModule(
        "average", 4, 4, local_ckpt=str(tmp_path / "local.ckpt"), global_ckpt=str(tmp_path / "global.ckpt")
    ).eval()
    avg.preflight()
    x = torch.randn(2, 4, 12, 10)
    want = (local.predict_slices(x) + glob.predict_slices(x)) / 2
    torch.testing.assert_close(avg.predict_slices(x), want)


def test_checkpoint_errors(tmp_path: Path, tiny_dm_kwargs: dict, tiny_trainer) -> None:
    _save_ckpt(tmp_path / "local.ckpt", "localpath", 0)
    with pytest.raises(CheckpointError, match="none.ckpt: stage checkpoint not found"):
        load_patch_net(tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match="holds a localpath CNN, expected globalpath"):
        PatchCNNModule(
            "average", local_ckpt=str(tmp_path / "local.ckpt"), global_ckpt=str(tmp_path / "local.ckpt")
        ).preflight()
    # without the two checkpoints the module can still be built (to load its own checkpoint into),
    # but fitting it is refused with a message naming the missing options
    dm = BratsDataModule(mode="patches", patches_per_epoch=16, **{**tiny_dm_kwargs, "batch_size": 16})
    trainer = tiny_trainer(tmp_path)
    with pytest.raises(ValueError, match="average needs model.local_ckpt and model.global_ckpt"):
        trainer.fit(PatchCNNModule("average"), datamodule=dm)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.ckpt: cannot read the stage checkpoint: not a torch file"):
        load_patch_net(tmp_path / "junk.ckpt")


@pytest.fixture(scope="module")
def first_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'trained' TwoPathCNN checkpoint (random weights large enough to give varied maps)."""
    torch.manual_seed(0)
    m = PatchCNNModule("twopath", 4, 4)
    with torch.no_grad():
        for p in m.net.parameters():
            p.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("first") / "twopath.ckpt"
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, path)
    return path


SMALL = {"max_cases": 4, "num_folds": 2}  # 1 test, 1-2 training cases: little first-stage work


def _dm(kwargs: dict, patch_size: int = 33) -> BratsDataModule:
    dm = BratsDataModule(
        mode="patches", patch_size=patch_size, patches_per_epoch=32, **{**kwargs, **SMALL, "batch_size": 16}
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("arch", ["input_cascade", "local_cascade", "mf_cascade"])
def test_cached_first_stage_equals_running_it_on_the_large_patch(
    arch: str, first_ckpt: Path, tiny_dm_kwargs: dict
) -> None:
    model = PatchCNNModule(arch, 4, 4, first_stage_ckpt=str(first_ckpt)).eval()
    model.preflight()  # reads the first stage's checkpoint (train() and setup() do it)
    dm = _dm(tiny_dm_kwargs)
    model.attach_first_stage(dm)
    cached = dm.patch_sampler
    large = PatchSampler(dm.train_cases, 4, model.net.first_patch)
    case, flat, _ = cached.sample(24, "balanced", np.random.default_rng(0))
    x33 = torch.from_numpy(cached.extract(case, flat)).float()
    aux = torch.from_numpy(cached.extract_aux(case, flat)).float()
    big = torch.from_numpy(large.extract(case, flat)).float()
    with torch.no_grad():
        a = model.net.second_stage(x33, aux)
        b = model.net(big)
    assert float(aux.std()) > 0.005
    # equal up to the float16 storage of the cached maps (probabilities to ~5e-4 relative)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_training_leaves_the_first_stage_bit_identical(
    tmp_path: Path, first_ckpt: Path, tiny_dm_kwargs: dict, tiny_trainer
) -> None:
    model = PatchCNNModule(
        "mf_cascade", 4, 4, first_stage_ckpt=str(first_ckpt), inference_batch_size=8, test_hd95=False
    )
    model.preflight()
    first_before = {k: v.clone() for k, v in model.net.first.state_dict().items()}
    # the first stage holds the checkpoint's weights, not a fresh initialisation
    saved = torch.load(first_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(first_before["local.conv1.conv.weight"], saved["net.local.conv1.conv.weight"])
    second_before = {k: v.clone() for k, v in model.net.second.state_dict().items()}
    dm = BratsDataModule(mode="patches", patches_per_epoch=32, **{**tiny_dm_kwargs, **SMALL, "batch_size": 16})
    trainer = tiny_trainer(tmp_path, 2, [TwoPhaseTraining(phase1_epochs=1, phase2_epochs=1)])
    trainer.fit(model, datamodule=dm)
    for k, v in model.net.first.state_dict().items():
        assert torch.equal(v, first_before[k]), k
    changed = {k for k, v in model.net.second.state_dict().items() if not torch.equal(v, second_before[k])}
    assert "output.weight" in changed and "local.conv1.conv.weight" in changed
    assert "val/dice_mean" in trainer.callback_metrics


def test_uncached_training_on_large_patches(
    tmp_path: Path, first_ckpt: Path, tiny_dm_kwargs: dict, tiny_trainer
) -> None:
    model = PatchCNNModule(
        "local_cascade",
        4,
        4,
        patch_size=56,
        first_stage_ckpt=str(first_ckpt),
        first_stage_cache=False,
        inference_batch_size=8,
        test_hd95=False,
    )
    dm = BratsDataModule(
        mode="patches", patch_size=56, patches_per_epoch=32, **{**tiny_dm_kwargs, **SMALL, "batch_size": 16}
    )
    before = model.net.second.output.weight.clone()
    tiny_trainer(tmp_path, 1).fit(model, datamodule=dm)
    assert not torch.equal(before, model.net.second.output.weight)


def test_missing_or_incompatible_first_stage(
    tmp_path: Path, first_ckpt: Path, tiny_dm_kwargs: dict, tiny_trainer
) -> None:
    with pytest.raises(CheckpointError, match="missing.ckpt: stage checkpoint not found"):
        PatchCNNModule("input_cascade", 4, 4, first_stage_ckpt=str(tmp_path / "missing.ckpt")).preflight()
    with pytest.raises(CheckpointError, match="in_channels=4, this model needs 8"):
        PatchCNNModule("input_cascade", 8, 4, first_stage_ckpt=str(first_ckpt)).preflight()
    local = PatchCNNModule("localpath", 4, 4)
    torch.save({"hyper_parameters": dict(local.hparams), "state_dict": local.state_dict()}, tmp_path / "local.ckpt")
    with pytest.raises(CheckpointError, match="holds a localpath CNN, expected twopath"):
        PatchCNNModule("input_cascade", 4, 4, first_stage_ckpt=str(tmp_path / "local.ckpt")).preflight()
    with pytest.raises(ValueError, match="patch_size=65 but input_cascade trains on 33x33"):
        PatchCNNModule("input_cascade", 4, 4, patch_size=65, first_stage_ckpt=str(first_ckpt))
    # without a first-stage checkpoint, training from scratch is refused with a clear message
    model = PatchCNNModule("input_cascade", 4, 4)
    dm = BratsDataModule(mode="patches", patches_per_epoch=16, **{**tiny_dm_kwargs, "batch_size": 16})
    with pytest.raises(ValueError, match="input_cascade needs model.first_stage_ckpt"):
        tiny_trainer(tmp_path, 1).fit(model, datamodule=dm)
