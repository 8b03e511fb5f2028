"""Shen et al. FCN: shapes, parameter counts, VGG-16 initialisation, bad input."""

from __future__ import annotations

import pytest
import torch

from brats_lightning.errors import CheckpointError
from brats_lightning.nets.fcn import VGG16_BLOCKS, ShenFCN, load_vgg16_weights


@pytest.mark.parametrize(
    ("kwargs", "shape", "expected"),
    [
        ({"in_channels": 4, "num_classes": 4}, (2, 4, 64, 80), (2, 4, 64, 80)),
        ({"in_channels": 8, "num_classes": 4}, (1, 8, 144, 192), (1, 4, 144, 192)),
        ({"in_channels": 8, "num_classes": 5, "n_blocks": 4}, (2, 8, 48, 56), (2, 5, 48, 56)),
        (
            {"in_channels": 2, "num_classes": 5, "upsample_mode": "bilinear", "width": 0.25},
            (3, 2, 32, 24),
            (3, 5, 32, 24),
        ),
    ],
)
def test_output_shape(kwargs: dict, shape: tuple, expected: tuple) -> None:
    net = ShenFCN(**kwargs).eval()
    assert net(torch.randn(shape)).shape == expected


def _hand_count(in_ch: int, classes: int, n_blocks: int, up: int) -> int:
    """Parameters counted by hand: bias-free 3x3 convs + BN (2 per channel) + 1x1 classifier."""
    total, prev = 0, in_ch
    for widths in VGG16_BLOCKS[:n_blocks]:
        for c in widths:
            total += prev * c * 9 + 2 * c
            prev = c
        total += (prev * up * 9 + 2 * up) + 2 * (up * up * 9 + 2 * up)  # the block's upsampling path
    return total + up * n_blocks * classes + classes


@pytest.mark.parametrize("n_blocks", [3, 4])
def test_parameter_count_matches_hand_count(n_blocks: int) -> None:
    net = ShenFCN(8, 4, n_blocks=n_blocks, up_channels=64)
    assert sum(p.numel() for p in net.parameters()) == _hand_count(8, 4, n_blocks, 64)


def test_fourth_block_adds_about_six_million_parameters() -> None:
    """Shen et al. Sec. 2.1: 'adding the forth block will introduce 6 millions more parameters'."""
    n3 = sum(p.numel() for p in ShenFCN(8, 4, 3).parameters())
    n4 = sum(p.numel() for p in ShenFCN(8, 4, 4).parameters())
    assert 5.5e6 < n4 - n3 < 6.5e6


def test_every_path_reaches_the_classifier() -> None:
    """Gradients flow into every block's upsampling path (all paths are concatenated)."""
    net = ShenFCN(4, 4, n_blocks=4, width=0.25)
    net(torch.randn(2, 4, 32, 32)).sum().backward()
    for path in net.paths:
        assert path[0][0].weight.grad is not None and path[0][0].weight.grad.abs().sum() > 0


def test_size_not_multiple_of_divisor_is_rejected() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        ShenFCN(4, 4, n_blocks=3)(torch.randn(1, 4, 30, 32))


def _vgg_state(bn: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG-16(-BN) state dict with random values."""
    g = torch.Generator().manual_seed(seed)
    state, idx, prev = {}, 0, 3
    for widths in (*VGG16_BLOCKS, (512, 512, 512)):
        for c in widths:
            state[f"features.{idx}.weight"] = torch.randn(c, prev, 3, 3, generator=g)
            state[f"features.{idx}.bias"] = torch.randn(c, generator=g)
            if bn:
                for k in ("weight", "bias", "running_mean", "running_var"):
                    state[f"features.{idx + 1}.{k}"] = torch.randn(c, generator=g)
            idx += 3 if bn else 2
            prev = c
        idx += 1  # max-pool
    state["classifier.0.weight"] = torch.randn(10, 25088 // 1000, generator=g)
    return state


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("n_blocks", [3, 4])
def test_vgg16_initialisation_from_state_dict_file(tmp_path, bn: bool, n_blocks: int) -> None:
    state = _vgg_state(bn)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = ShenFCN(8, 4, n_blocks=n_blocks)
    before_paths = [p.clone() for p in net.paths.parameters()]
    n = load_vgg16_weights(net, path)
    convs = net.downsampling_convs()
    assert n == len(convs) == sum(len(w) for w in VGG16_BLOCKS[:n_blocks])
    keys = sorted({int(k.split(".")[1]) for k in state if k.endswith(".weight") and state[k].dim() == 4})
    # first layer: RGB kernels averaged and repeated over the 8 input channels, scaled by 3/8
    w0 = state[f"features.{keys[0]}.weight"]
    expected0 = w0.mean(1, keepdim=True).repeat(1, 8, 1, 1) * 3 / 8
    torch.testing.assert_close(convs[0].weight, expected0)
    for key, conv in list(zip(keys, convs))[1:]:
        torch.testing.assert_close(conv.weight, state[f"features.{key}.weight"])
    # the VGG bias goes into the following batch norm's shift
    torch.testing.assert_close(net.blocks[0][0][1].bias, state[f"features.{keys[0]}.bias"])
    # upsampling paths are untouched (He-initialised)
    for a, b in zip(before_paths, net.paths.parameters()):
        assert torch.equal(a, b)


def test_vgg16_initialisation_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing.pth: VGG-16 weights file not found"):
        load_vgg16_weights(ShenFCN(4, 4), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_vgg16_weights(ShenFCN(4, 4), bad)
    with pytest.raises(ValueError, match="VGG-16"):
        load_vgg16_weights(ShenFCN(4, 4), {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="VGG-16"):
        load_vgg16_weights(ShenFCN(4, 4, width=0.5), _vgg_state(False))


@pytest.mark.parametrize("scale", [2, 4])
def test_upsampling_convolution_at_low_resolution_is_exact(scale: int) -> None:
    from torch.nn import functional as F

    from brats_lightning.nets.fcn import nearest_upsample_conv3x3

    torch.manual_seed(scale)
    x, w = torch.randn(2, 5, 7, 9), torch.randn(6, 5, 3, 3)
    want = F.conv2d(F.interpolate(x, scale_factor=scale, mode="nearest"), w, padding=1)
    torch.testing.assert_close(nearest_upsample_conv3x3(x, w, scale), want, atol=1e-5, rtol=1e-5)
    # and the whole net equals the paper's literal upsample-then-convolve
    net = ShenFCN(4, 4, width=0.25).eval()
    xin = torch.randn(2, 4, 32, 40)
    with torch.no_grad():
        feats, h = [], xin
        for i, (block, path) in enumerate(zip(net.blocks, net.paths)):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            feats.append(path(h if i == 0 else F.interpolate(h, scale_factor=2**i, mode="nearest")))
        torch.testing.assert_close(net(xin), net.classifier(torch.cat(feats, 1)), atol=1e-4, rtol=1e-4)


def test_inference_net_with_folded_batchnorm_gives_the_same_logits() -> None:
    import copy

    torch.manual_seed(1)
    net = ShenFCN(8, 4, width=0.25)
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            net(torch.randn(4, 8, 32, 40) * 2 + 0.5)
    net.eval()
    x = torch.randn(2, 8, 32, 40)
    with torch.no_grad():
        want = net(x)
        fused = copy.deepcopy(net).fuse_batchnorm_()
        torch.testing.assert_close(fused(x), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(net(x), want)  # cached phase kernels: the same again
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
