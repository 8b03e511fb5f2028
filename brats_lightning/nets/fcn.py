"""Symmetry-driven fully convolutional network of Shen et al. (ICIP 2017).

Reference: H. Shen, J. Zhang, W. Zheng, "Efficient symmetry-driven fully convolutional network for
multimodal brain tumor segmentation", ICIP 2017 (``../shared/papers/000_*.txt``), Sec. 2.1 and Fig. 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from brats_lightning.files import load_torch_file

__all__ = ["VGG16_BLOCKS", "ShenFCN", "load_vgg16_weights", "nearest_upsample_conv3x3"]

#: Channel widths of the convolutions of the first four VGG-16 blocks (Simonyan & Zisserman 2015).
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))


def phase_kernels(weight: torch.Tensor, scale: int) -> list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
    """The per-phase kernels of :func:`nearest_upsample_conv3x3`: ``(kernel, padding, start)`` per phase.

    Phase ``(a, b)`` is ``conv2d(x, kernel, padding=padding)[..., start[0]:start[0]+H, start[1]:start[1]+W]``.
    """
    rows = [[(a + d) // scale for d in (-1, 0, 1)] for a in range(scale)]
    out = []
    for us in rows:
        for vs in rows:
            u0, v0 = min(us), min(vs)
            k = weight.new_zeros(weight.shape[0], weight.shape[1], max(us) - u0 + 1, max(vs) - v0 + 1)
            for i, u in enumerate(us):
                for j, v in enumerate(vs):
                    k[:, :, u - u0, v - v0] += weight[:, :, i, j]
            # with symmetric padding p, output row r sees input rows r - p .. r - p + size - 1: row
            # start + i sees i + u0 .. i + max(us) when start = p + u0
            ph, pw = k.shape[2] - 1, k.shape[3] - 1
            out.append((k, (ph, pw), (ph + u0, pw + v0)))
    return out


def nearest_upsample_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: int,
    bias: torch.Tensor | None = None,
    kernels: list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] | None = None,
) -> torch.Tensor:
    """``conv2d(nearest_upsample(x, scale), weight, bias, padding=1)`` computed at the low resolution.

    Each output pixel ``(scale*i + a, scale*j + b)`` of a 3x3 convolution of a nearest-upsampled map
    sees at most 2x2 distinct input pixels, at offsets that depend only on its phase ``(a, b)``. So
    the result is, per phase, a small convolution of ``x`` with the 3x3 kernel's taps summed over
    the pixels they share (:func:`phase_kernels`), written into every ``scale``-th pixel: the same
    values (up to float rounding) with 4/9 of the multiply-adds for ``scale=2`` and 1/4 for
    ``scale=4`` (zero padding maps onto zero padding). In Shen et al.'s FCN this removes 22% of the
    forward FLOPs.

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(O, C, 3, 3)``.
        scale: the integer upsampling factor.
        bias: ``(O,)`` or ``None``.
        kernels: precomputed :func:`phase_kernels` of ``weight``.

    Returns:
        ``(N, O, scale*H, scale*W)``.
    """
    n, _, h, w = x.shape
    kernels = kernels if kernels is not None else phase_kernels(weight, scale)
    out = None
    for p, (k, padding, (r0, c0)) in enumerate(kernels):
        y = F.conv2d(x, k, bias, padding=padding)
        y = y[..., r0 : r0 + h, c0 : c0 + w]
        if out is None:
            out = torch.empty(
                (n, y.shape[1], scale * h, scale * w), dtype=y.dtype, device=y.device, memory_format=_layout(x)
            )
        a, b = divmod(p, scale)
        out[..., a::scale, b::scale] = y
    assert out is not None
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 'same' convolution followed by batch norm and ReLU (Shen et al. Sec. 2.1)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def he_init(net: nn.Module) -> None:
    """He initialisation of every convolution of ``net`` (Shen et al. Sec. 3.1), unit BN, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ShenFCN(nn.Module):
    """VGG-style FCN with one upsampling path per block, concatenated before one classifier.

    Shen et al. Sec. 2.1: the downsampling path is the first 3 (or 4) VGG-16 blocks (3x3 convs,
    2x2 max-pooling with stride 2). The output of the last convolution of every block, *before*
    pooling, is upsampled to the input size without deconvolution, then passed through three
    convolutions; the resulting maps of all paths are concatenated and fed to a single
    classification layer (1x1 convolution; softmax + categorical cross entropy in the loss).
    Every convolution is followed by batch norm and ReLU.

    Readings taken where the paper is silent (each a constructor argument):

    * ``upsample_mode="nearest"``: the authors used Keras, whose ``UpSampling2D`` repeats pixels.
    * ``up_channels=64``: the width of the three convolutions of each upsampling path is not
      given in the text; 64 keeps "adding the fourth block introduces about 6 million more
      parameters" true (it adds 5.9M in the block plus 0.37M in its path).
    * The fourth block's trailing max-pool is omitted: nothing consumes its output.

    Input height and width must be multiples of ``2 ** (n_blocks - 1)``.

    Args:
        in_channels: 4 (images) or 8 (images + symmetry maps, Sec. 2.2).
        num_classes: number of output classes (4 for BraTS 2017+, 5 for BRATS 2013).
        n_blocks: 3 (paper default) or 4 ("going deeper", Sec. 3.2, Fig. 4).
        up_channels: width of the convolutions of each upsampling path.
        width: multiplier applied to every channel count (1.0 = paper; smaller for quick CPU runs;
            VGG-16 initialisation needs 1.0).
        upsample_mode: ``"nearest"`` or ``"bilinear"``.

    Examples:
        >>> net = ShenFCN(in_channels=8, num_classes=4)
        >>> net(torch.zeros(2, 8, 64, 80)).shape
        torch.Size([2, 4, 64, 80])
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 4,
        n_blocks: int = 3,
        up_channels: int = 64,
        width: float = 1.0,
        upsample_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if n_blocks not in (1, 2, 3, 4):
            raise ValueError(f"n_blocks must be 1..4 (VGG-16 blocks), got {n_blocks}")
        if upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {upsample_mode!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.n_blocks = n_blocks
        self.width = width
        self.upsample_mode = upsample_mode
        #: nearest upsampling + convolution computed at the low resolution (exact); False runs them literally
        self.low_res_upsampling = True

        def w(c: int) -> int:
            return max(1, round(c * width))

        up = w(up_channels)
        self.blocks = nn.ModuleList()
        self.paths = nn.ModuleList()
        prev = in_channels
        for widths in VGG16_BLOCKS[:n_blocks]:
            layers = []
            for c in widths:
                layers.append(_conv_bn_relu(prev, w(c)))
                prev = w(c)
            self.blocks.append(nn.Sequential(*layers))
            self.paths.append(nn.Sequential(_conv_bn_relu(prev, up), _conv_bn_relu(up, up), _conv_bn_relu(up, up)))
        self.classifier = nn.Conv2d(up * n_blocks, num_classes, kernel_size=1)
        self.reset_parameters()

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this number."""
        return 2 ** (self.n_blocks - 1)

    def reset_parameters(self) -> None:
        """He initialisation of every convolution (Shen et al. Sec. 3.1), unit BN, zero biases."""
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits ``(N, num_classes, H, W)`` for input ``(N, in_channels, H, W)``."""
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of {self.divisor} (required by {self.n_blocks} blocks)"
            )
        logits = None
        for i, (block, path) in enumerate(zip(self.blocks, self.paths)):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            x = block(x)
            if i == 0:
                y = path(x)
            elif self.upsample_mode == "nearest" and self.low_res_upsampling:
                # nearest upsampling + the path's first 3x3 convolution, done at the low resolution
                seq = cast(nn.Sequential, path)
                conv, bn, relu = cast(nn.Sequential, seq[0])
                assert isinstance(conv, nn.Conv2d)
                y = relu(bn(nearest_upsample_conv3x3(x, conv.weight, 2**i, conv.bias, self._phases(conv, 2**i))))
                y = seq[1:](y)
            else:
                mode = {"align_corners": False} if self.upsample_mode == "bilinear" else {}
                y = path(F.interpolate(x, scale_factor=2**i, mode=self.upsample_mode, **mode))
            # the classifier on the concatenated paths = the sum of its slices applied to each path; in fp32
            # under autocast (0.2% of the FLOPs), so that logits are not rounded to bf16
            c = y.shape[1]
            with torch.autocast(x.device.type, enabled=False):
                part = F.conv2d(y.float(), self.classifier.weight[:, i * c : (i + 1) * c])
            logits = part if logits is None else logits + part
        assert logits is not None and self.classifier.bias is not None
        return logits + self.classifier.bias.view(1, -1, 1, 1)

    def _phases(self, conv: nn.Conv2d, scale: int) -> list | None:
        """The phase kernels of ``conv``: computed once while the weights do not change (inference)."""
        if torch.is_grad_enabled() and conv.weight.requires_grad:
            return None  # training: built in the graph, every step
        key = (id(conv), conv.weight._version, conv.weight.data_ptr(), scale)
        cache = self.__dict__.setdefault("_phase_cache", {})
        if key not in cache:
            if len(cache) > 8:  # weights changed since: forget the old kernels
                cache.clear()
            with torch.no_grad():
                cache[key] = phase_kernels(conv.weight.detach(), scale)
        return cache[key]

    def fuse_batchnorm_(self) -> ShenFCN:
        """Fold every batch norm into its convolution, for inference only (in place; returns ``self``).

        ``BN(conv(x)) = conv'(x)`` with ``W' = W * g / s``, ``b' = beta - mu * g / s`` (``s`` the running
        std): the same outputs with one pass less over every feature map. The net cannot train afterwards.
        """
        with torch.no_grad():
            for seq in [*self.blocks, *self.paths]:
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
                    fused.to(device=conv.weight.device, memory_format=_layout(conv.weight))  # type: ignore[call-overload]
                    layer[0], layer[1] = fused, nn.Identity()
        self.eval()
        return self

    def downsampling_convs(self) -> list[nn.Conv2d]:
        """The convolutions of the downsampling path in VGG-16 order."""
        return [
            cast(nn.Conv2d, cast(nn.Sequential, layer)[0])
            for block in self.blocks
            for layer in cast(nn.Sequential, block)
        ]


def _vgg_conv_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Prefixes ``features.<i>`` of the convolutions of a torchvision VGG state dict, in order."""
    idx = sorted(
        {
            int(k.split(".")[1])
            for k in state
            if k.startswith("features.") and k.endswith(".weight") and state[k].dim() == 4
        }
    )
    return [f"features.{i}" for i in idx]


def load_vgg16_weights(net: ShenFCN, source: str | Path | Mapping[str, torch.Tensor]) -> int:
    """Initialise the downsampling path of ``net`` from a torchvision-format VGG-16 state dict.

    Shen et al. Sec. 3.1 initialise the downsampling path from VGG-16. Both ``vgg16`` and
    ``vgg16_bn`` layouts are accepted (only convolution weights and biases are used; our batch
    norms stay freshly initialised). The first convolution of VGG sees RGB; ours sees
    ``in_channels`` MR channels, so its kernels are averaged over RGB and repeated over the input
    channels, scaled by ``3 / in_channels`` to keep the activation scale.

    Args:
        net: the network to initialise (``width`` must be 1.0).
        source: path to a ``.pth`` file holding the state dict, or the state dict itself.

    Returns:
        The number of convolutions initialised.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the state dict is not a VGG-16 layout or its shapes do not match.
    """
    if isinstance(source, (str, Path)):
        state, name = load_torch_file(source, "VGG-16 weights file"), str(source)
    else:
        state, name = source, "<state dict>"
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if net.width != 1.0:
        raise ValueError(f"VGG-16 initialisation needs the paper's channel widths (width=1.0), got width={net.width}")
    keys = _vgg_conv_keys(state)
    convs = net.downsampling_convs()
    if len(keys) < len(convs):
        raise ValueError(
            f"{name}: found {len(keys)} convolutions under 'features.*', the {net.n_blocks}-block FCN needs "
            f"{len(convs)} (is this a torchvision VGG-16 state dict?)"
        )
    with torch.no_grad():
        for i, (key, conv) in enumerate(zip(keys, convs)):
            weight = state[f"{key}.weight"].float()
            if i == 0:
                weight = weight.mean(dim=1, keepdim=True).repeat(1, conv.in_channels, 1, 1)
                weight *= 3.0 / conv.in_channels
            if weight.shape != conv.weight.shape:
                raise ValueError(
                    f"{name}: {key}.weight has shape {tuple(weight.shape)}, expected {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(weight)
            bias = state.get(f"{key}.bias")
            if bias is not None:
                # Our convolutions are bias-free (batch norm follows); fold the VGG bias into BN's shift.
                bn = _bn_after(net, conv)
                bn.bias.copy_(bias.float())
    return len(convs)


def _bn_after(net: ShenFCN, conv: nn.Conv2d) -> nn.BatchNorm2d:
    for block in net.blocks:
        for layer in cast(nn.Sequential, block):
            seq = cast(nn.Sequential, layer)
            if seq[0] is conv:
                return cast(nn.BatchNorm2d, seq[1])
    raise KeyError("convolution not found in the downsampling path")
