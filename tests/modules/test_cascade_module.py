"""Training cascades: first stage untouched, cached first-stage maps == running it on the large patch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brats_lightning.callbacks.two_phase import TwoPhaseTraining
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.sampling import PatchSampler
from brats_lightning.errors import CheckpointError
from brats_lightning.modules.patch import PatchCNNModule


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
