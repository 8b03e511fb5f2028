"""brats_lightning.nets.unet: Shen's encoder with a U-Net decoder, and MONAI's DynUNet."""

from __future__ import annotations

import pytest
import torch


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
