"""Shen et al.'s VGG downsampling path with a U-Net decoder (skip connections), and MONAI's DynUNet in 2D.

Shen et al.'s FCN (:class:`~brats_lightning.nets.fcn.ShenFCN`) upsamples the last feature map of
every block straight to full size and adds the paths: the deep, coarse blocks never see the fine
detail of the shallow ones before the classifier. A thin enhancing rim is a few pixels wide. The
U-Net decoder (Ronneberger et al. 2015; Isensee et al. 2021's nnU-Net, the BraTS reference since
2018) goes back up one level at a time and concatenates each level's encoder features (skip
connections) before two convolutions, so every output pixel is decided with full-resolution
features in view. :class:`ShenUNet` keeps Shen et al.'s encoder (the first 3 or 4 VGG-16 blocks,
symmetry maps as extra input channels, VGG-16 initialisation possible) and replaces the upsampling
paths by that decoder.

:func:`dynunet_2d` builds MONAI's ``DynUNet`` (nnU-Net's network) in 2D as a modern reference in
the same harness.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from brats_lightning.nets.fcn import VGG16_BLOCKS, _conv_bn_relu, he_init

__all__ = ["ShenUNet", "dynunet_2d", "DYNUNET_FILTERS"]

#: nnU-Net's 2D filters per level (32 doubling to at most 320), for 5 levels (4 poolings)
DYNUNET_FILTERS: tuple[int, ...] = (32, 64, 128, 256, 320)


class ShenUNet(nn.Module):
    """Shen et al.'s VGG-16 downsampling path (Sec. 2.1) with a U-Net decoder instead of the upsampling paths.

    Encoder: the first ``n_blocks`` VGG-16 blocks (3x3 convolutions + batch norm + ReLU, 2x2 max-pooling
    between blocks), as :class:`~brats_lightning.nets.fcn.ShenFCN`. Decoder: from the deepest block
    up, each level upsamples by 2 (nearest, as Keras' ``UpSampling2D`` in the paper), concatenates the
    encoder block of that level and applies two 3x3 conv + BN + ReLU with that block's width; a 1x1
    convolution gives the logits (computed in fp32 under autocast, as the FCN's classifier).

    Args:
        in_channels: input channels (4 images, 8 with symmetry maps, more with neighbouring slices).
        num_classes: output channels (classes, or regions for region-based outputs).
        n_blocks: 3 or 4 VGG blocks.
        width: channel multiplier (1.0 = VGG-16).

    Examples:
        >>> net = ShenUNet(in_channels=8, num_classes=3, width=0.25)
        >>> net(torch.zeros(2, 8, 64, 80)).shape
        torch.Size([2, 3, 64, 80])
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 4, n_blocks: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if n_blocks not in (2, 3, 4):
            raise ValueError(f"n_blocks must be 2..4 (VGG-16 blocks), got {n_blocks}")
        self.in_channels, self.num_classes, self.n_blocks, self.width = in_channels, num_classes, n_blocks, width

        def w(c: int) -> int:
            return max(1, round(c * width))

        self.blocks = nn.ModuleList()
        widths = []
        prev = in_channels
        for block in VGG16_BLOCKS[:n_blocks]:
            layers = []
            for c in block:
                layers.append(_conv_bn_relu(prev, w(c)))
                prev = w(c)
            self.blocks.append(nn.Sequential(*layers))
            widths.append(prev)
        self.decoder = nn.ModuleList()
        for level in range(n_blocks - 2, -1, -1):  # from the second deepest block up to the first
            below, here = widths[level + 1], widths[level]  # (a decoder level keeps its block's width)
            self.decoder.append(nn.Sequential(_conv_bn_relu(below + here, here), _conv_bn_relu(here, here)))
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.reset_parameters()

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this number."""
        return 2 ** (self.n_blocks - 1)

    def reset_parameters(self) -> None:
        """He initialisation of every convolution, unit BN, zero biases (as :class:`ShenFCN`)."""
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``(N, num_classes, H, W)`` for input ``(N, in_channels, H, W)``."""
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of {self.divisor} (required by {self.n_blocks} blocks)"
            )
        skips = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            x = block(x)
            skips.append(x)
        for level, dec in zip(range(self.n_blocks - 2, -1, -1), self.decoder):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = dec(torch.cat([x, skips[level]], dim=1))
        with torch.autocast(x.device.type, enabled=False):
            return self.classifier(x.float())

    def downsampling_convs(self) -> list[nn.Conv2d]:
        """The convolutions of the downsampling path in VGG-16 order (for VGG-16 initialisation)."""
        return [
            cast(nn.Conv2d, cast(nn.Sequential, layer)[0])
            for block in self.blocks
            for layer in cast(nn.Sequential, block)
        ]

    def fuse_batchnorm_(self) -> ShenUNet:
        """Fold every batch norm into its convolution, for inference only (in place; returns ``self``)."""
        with torch.no_grad():
            for seq in [*self.blocks, *self.decoder]:
                for layer in cast(nn.Sequential, seq):
                    layer = cast(nn.Sequential, layer)
                    conv, bn = layer[0], layer[1]
                    if not isinstance(bn, nn.BatchNorm2d):
                        continue
                    assert isinstance(conv, nn.Conv2d) and bn.running_var is not None and bn.running_mean is not None
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True)
                    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                    assert fused.bias is not None
                    fused.bias.copy_(bn.bias - bn.running_mean * scale)
                    layout = (
                        torch.channels_last
                        if conv.weight.is_contiguous(memory_format=torch.channels_last)
                        else torch.contiguous_format
                    )
                    fused.to(device=conv.weight.device, memory_format=layout)  # type: ignore[call-overload]
                    layer[0], layer[1] = fused, nn.Identity()
        self.eval()
        return self


def dynunet_2d(in_channels: int, num_classes: int, levels: int = 5, width: float = 1.0) -> nn.Module:
    """MONAI's ``DynUNet`` (nnU-Net, Isensee et al. 2021) in 2D: ``levels`` resolutions, 3x3 kernels,
    instance norm + leaky ReLU, filters :data:`DYNUNET_FILTERS` times ``width``; input sides must be
    multiples of ``2 ** (levels - 1)``.

    Examples:
        >>> net = dynunet_2d(8, 3, levels=4, width=0.25)
        >>> net(torch.zeros(1, 8, 64, 80)).shape
        torch.Size([1, 3, 64, 80])
    """
    from monai.networks.nets import DynUNet

    if not 2 <= levels <= len(DYNUNET_FILTERS):
        raise ValueError(f"levels must be 2..{len(DYNUNET_FILTERS)}, got {levels}")
    filters = [max(4, round(f * width)) for f in DYNUNET_FILTERS[:levels]]
    strides = [[1, 1]] + [[2, 2]] * (levels - 1)
    return DynUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[[3, 3]] * levels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        norm_name="instance",
        res_block=False,
    )
