"""Cascaded CNNs (Havaei Fig. 3): shapes, frozen first stage, whole-slice == patch-by-patch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brats_lightning.nets.cascade import CascadeCNN, InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN
from brats_lightning.nets.twopath import PatchCNN, TwoPathCNN, count_parameters

CASCADES = {a: c for a, c in PatchCNN.registry.items() if issubclass(c, CascadeCNN)}


def _scramble(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 / max(1, p[0].numel()) ** 0.5))


def _cascade(cls, seed: int = 0):
    first = TwoPathCNN(4, 5)
    _scramble(first, seed)
    net = cls(first, 4, 5)
    _scramble(net.second, seed + 1)
    return net.eval()


@pytest.mark.parametrize(
    ("cls", "side", "first_out", "hidden"),
    [
        (InputCascadeCNN, 65, 33, (9, 33, 33)),
        (LocalCascadeCNN, 56, 24, (69, 24, 24)),
        (MFCascadeCNN, 53, 21, (229, 21, 21)),
    ],
)
def test_figure3_shapes(cls, side: int, first_out: int, hidden: tuple) -> None:
    net = cls(TwoPathCNN(4, 5), 4, 5).eval()
    x = torch.randn(2, 4, side, side)
    assert net.first_probs(x).shape == (2, 5, first_out, first_out)
    assert net(x).shape == (2, 5, 1, 1)
    if cls is InputCascadeCNN:
        assert net.second.local.conv1.conv.in_channels == hidden[0]
    elif cls is LocalCascadeCNN:
        assert net.second.local.conv2.conv.in_channels == hidden[0]
    else:
        assert net.second.output.in_channels == hidden[0]


def test_parameter_counts_of_the_second_stage() -> None:
    two = count_parameters(TwoPathCNN(4, 5))
    assert count_parameters(InputCascadeCNN(TwoPathCNN(4, 5), 4, 5).second) == two + 5 * 128 * 49 + 5 * 320 * 169
    assert count_parameters(LocalCascadeCNN(TwoPathCNN(4, 5), 4, 5).second) == two + 5 * 128 * 9
    assert count_parameters(MFCascadeCNN(TwoPathCNN(4, 5), 4, 5).second) == two + 5 * 5 * 441


def test_first_stage_is_frozen_and_never_drops_out() -> None:
    net = MFCascadeCNN(TwoPathCNN(4, 5), 4, 5)
    assert not any(p.requires_grad for p in net.first.parameters())
    assert all(p.requires_grad for p in net.second.parameters())
    net.train()
    assert net.second.training and not net.first.training
    x = torch.randn(3, 4, 53, 53)
    torch.testing.assert_close(net.first_probs(x), net.first_probs(x))


@pytest.mark.parametrize("name", sorted(CASCADES))
def test_whole_slice_equals_patch_by_patch(name: str) -> None:
    cls = CASCADES[name]
    net = _cascade(cls, seed=3)
    h, w = 9, 8
    x = torch.randn(1, 4, h, w)
    before, after = net.first_pad
    padded = F.pad(x, (before, after, before, after))
    with torch.no_grad():
        whole = torch.softmax(net(padded), 1)[0]
        assert whole.shape == (5, h, w)
        side = net.first_patch
        patches = padded.unfold(2, side, 1).unfold(3, side, 1)[0].permute(1, 2, 0, 3, 4).reshape(h * w, 4, side, side)
        one_by_one = torch.cat([torch.softmax(net(p[None]), 1) for p in patches])[:, :, 0, 0].T.reshape(5, h, w)
    assert float((whole - one_by_one).abs().max()) <= 1e-5
    assert float(whole.std(0).mean()) > 0.02


def test_first_stage_map_matches_its_patches() -> None:
    net = _cascade(InputCascadeCNN, seed=5)
    x = torch.randn(1, 4, 10, 12)
    maps = net.first_stage_map(x, margin=16)  # (1, 5, 42, 44)
    assert maps.shape == (1, 5, 42, 44)
    padded = F.pad(x, (32, 32, 32, 32))
    # map entry (16 + i, 16 + j) = first stage on the 33x33 patch centred on pixel (i, j)
    for i, j in [(0, 0), (4, 7), (-16, -16), (25, 27)]:
        patch = padded[..., 32 + i - 16 : 32 + i + 17, 32 + j - 16 : 32 + j + 17]
        torch.testing.assert_close(maps[0, :, 16 + i, 16 + j], net.first_probs(patch)[0, :, 0, 0])


def test_first_stage_must_match() -> None:
    with pytest.raises(ValueError, match="same number of classes"):
        InputCascadeCNN(TwoPathCNN(4, 4), 4, 5)
    with pytest.raises(ValueError, match="input channels"):
        InputCascadeCNN(TwoPathCNN(2, 5), 4, 5)


def test_mf_cascade_does_not_drop_out_the_first_stages_probabilities() -> None:
    from brats_lightning.nets.cascade import MFCascadeCNN
    from brats_lightning.nets.twopath import TwoPathCNN

    torch.manual_seed(0)
    net = MFCascadeCNN(TwoPathCNN(4, 4), 4, 4, dropout=0.5).train()
    x = torch.randn(3, 4, 53, 53)
    seen: list[torch.Tensor] = []
    net.second.output.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    net(x)
    probs = net.first_probs(x)
    # the last 4 channels of the output layer's input are the first stage's probabilities, untouched
    torch.testing.assert_close(seen[0][:, -4:], probs)
    assert (seen[0][:, :-4] == 0).float().mean() > 0.3  # the hidden units are dropped out
    dropped = MFCascadeCNN(TwoPathCNN(4, 4), 4, 4, dropout=0.5, first_stage_dropout=True).train()
    dropped.second.output.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    dropped(x)
    assert (seen[1][:, -4:] == 0).any()  # asked for: dropped too
