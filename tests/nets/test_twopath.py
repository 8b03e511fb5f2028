"""Havaei et al. patch CNNs: Figure 2 shapes, hand-counted parameters, whole-slice == patch-by-patch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brats_lightning.nets.twopath import (
    AverageCNN,
    GlobalPathCNN,
    LocalPathCNN,
    MaxoutConv2d,
    TwoPathCNN,
    count_parameters,
    set_output_bias_,
)


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _hand(arch: str, cin: int = 4, classes: int = 5, k: int = 2) -> int:
    local = _conv(cin, 64 * k, 7) + _conv(64, 64 * k, 3)
    glob = _conv(cin, 160 * k, 13)
    return {
        "local": local + _conv(64, classes, 21),
        "global": glob + _conv(160, classes, 21),
        "twopath": local + glob + _conv(224, classes, 21),
    }[arch]


@pytest.mark.parametrize(("cls", "arch"), [(LocalPathCNN, "local"), (GlobalPathCNN, "global"), (TwoPathCNN, "twopath")])
@pytest.mark.parametrize(("cin", "classes"), [(4, 5), (2, 4)])
def test_parameter_count_matches_hand_count(cls, arch: str, cin: int, classes: int) -> None:
    assert count_parameters(cls(cin, classes)) == _hand(arch, cin, classes)


def test_documented_counts() -> None:
    assert count_parameters(LocalPathCNN()) == 240_197
    assert count_parameters(GlobalPathCNN()) == 569_445
    assert count_parameters(TwoPathCNN()) == 809_637


def test_figure2_shapes() -> None:
    net = TwoPathCNN().eval()
    x = torch.randn(3, 4, 33, 33)
    assert net.local.first_hidden(x).shape == (3, 64, 24, 24)
    assert net.local(x).shape == (3, 64, 21, 21)
    assert net.glob(x).shape == (3, 160, 21, 21)
    assert net.hidden(x).shape == (3, 224, 21, 21)
    assert net(x).shape == (3, 5, 1, 1)
    assert net.output_layer() is net.output and net.output.kernel_size == (21, 21)


def test_maxout_takes_the_max_over_consecutive_maps() -> None:
    m = MaxoutConv2d(1, 2, 1, k=3)
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5, 3.0, -2.0]).view(6, 1, 1, 1))
        m.conv.bias.zero_()
    x = torch.tensor([[[[1.0, -1.0]]]])
    out = m(x)
    assert out[0, :, 0, 0].tolist() == [2.0, 3.0]  # max(1,-1,2), max(0.5,3,-2)
    assert out[0, :, 0, 1].tolist() == [1.0, 2.0]  # max(-1,1,-2), max(-0.5,-3,2)


def test_init_uniform_and_output_bias_from_frequencies() -> None:
    net = TwoPathCNN()
    for p in (net.local.conv1.conv.weight, net.glob.conv.conv.weight, net.output.weight):
        assert float(p.abs().max()) <= 0.005 and float(p.std()) > 0.002
    assert float(net.local.conv1.conv.bias.abs().max()) == 0.0
    freqs = [0.9, 0.04, 0.03, 0.02, 0.01]
    set_output_bias_(net.output, freqs)
    torch.testing.assert_close(torch.softmax(net.output.bias, 0), torch.tensor(freqs))


def _scramble(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Larger random weights so that probabilities differ clearly between pixels and classes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 / max(1, p[0].numel()) ** 0.5))
    return net.eval()


@pytest.mark.parametrize("cls", [LocalPathCNN, GlobalPathCNN, TwoPathCNN])
def test_whole_slice_equals_patch_by_patch(cls) -> None:
    torch.manual_seed(0)
    net = _scramble(cls(4, 5))
    h, w = 12, 10
    x = torch.randn(1, 4, h, w)
    padded = F.pad(x, (16, 16, 16, 16))
    with torch.no_grad():
        whole = torch.softmax(net(padded), 1)[0]  # (5, h, w)
        assert whole.shape == (5, h, w)
        patches = padded.unfold(2, 33, 1).unfold(3, 33, 1)  # (1, 4, h, w, 33, 33)
        patches = patches[0].permute(1, 2, 0, 3, 4).reshape(h * w, 4, 33, 33)
        one_by_one = torch.cat([torch.softmax(net(p[None]), 1) for p in patches])  # (h*w, 5, 1, 1)
    one_by_one = one_by_one[:, :, 0, 0].T.reshape(5, h, w)
    assert float((whole - one_by_one).abs().max()) <= 1e-5
    assert float(whole.std(0).mean()) > 0.02  # the comparison is not between near-uniform outputs


def test_average_cnn_averages_probabilities() -> None:
    local, glob = _scramble(LocalPathCNN(), 1), _scramble(GlobalPathCNN(), 2)
    avg = AverageCNN(local, glob).eval()
    x = torch.randn(2, 4, 40, 40)
    with torch.no_grad():
        want = (torch.softmax(local(x), 1) + torch.softmax(glob(x), 1)) / 2
        got = torch.softmax(avg(x), 1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_stride_one_pooling_by_shifted_views_is_max_pool2d(k: int) -> None:
    from brats_lightning.nets.twopath import max_pool_stride1

    x = torch.randn(2, 3, 17, 19)
    assert torch.equal(max_pool_stride1(x, k), F.max_pool2d(x, k, stride=1))


def test_whole_slice_output_is_the_same_with_the_fast_layers_and_as_written() -> None:
    """The stride-1 pooling by shifts and the 21x21 output convolution by rows compute the same net."""
    from brats_lightning.nets import twopath

    torch.manual_seed(0)
    net = twopath.TwoPathCNN(4, 5).eval()
    x = torch.randn(1, 4, 72, 80)
    with torch.no_grad():
        fast = net(x)
        twopath.FAST_LAYERS = False
        try:
            written = net(x)
        finally:
            twopath.FAST_LAYERS = True
    assert fast.shape == written.shape == (1, 5, 40, 48)
    torch.testing.assert_close(fast, written, rtol=1e-4, atol=1e-4)
