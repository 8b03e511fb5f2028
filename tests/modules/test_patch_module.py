"""PatchCNNModule: schedules, regularisation, max-norm, output bias, whole-slice inference, Average."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from brats_lightning.data.datamodule import BratsDataModule
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
