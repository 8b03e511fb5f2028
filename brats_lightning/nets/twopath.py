"""Patch CNNs of Havaei et al. (Medical Image Analysis 2017): Maxout TwoPathCNN and its single paths.

Reference: M. Havaei et al., "Brain tumor segmentation with deep neural networks"
(``../shared/papers/001_*.txt``), Sec. 3 (Eq. 1-3, Fig. 1-2) and Sec. 4.

All convolutions are *valid* and max-pooling has stride 1, so a net that maps a 33x33 patch to
one label also maps a whole slice, padded by 16 pixels on each side, to a label for every pixel
in one pass (Sec. 4: "45 times faster"). Every net names its output layer ``output`` so that the
second training phase can find it.

Parameter counts (4 input channels, 5 classes; checked against a hand count in the tests):

* ``LocalPathCNN``: 25,216 (conv 7x7) + 73,856 (conv 3x3) + 141,125 (output 21x21) = 240,197
* ``GlobalPathCNN``: 216,640 (conv 13x13) + 352,805 (output 21x21) = 569,445
* ``TwoPathCNN``: 25,216 + 73,856 + 216,640 + 493,925 (output 21x21 on 224 maps) = 809,637
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MaxoutConv2d",
    "max_pool_stride1",
    "conv_by_rows",
    "apply_output",
    "LocalPath",
    "GlobalPath",
    "PatchCNN",
    "LocalPathCNN",
    "GlobalPathCNN",
    "TwoPathCNN",
    "AverageCNN",
    "init_havaei_",
    "set_output_bias_",
    "count_parameters",
]


#: the fast forms of the pooling and of the output layer (exactly the same functions): ``False`` runs the
#: layers as written (``F.max_pool2d``, the output convolution), for ``benchmarks/bench_inference.py``'s
#: before/after comparison in one run
FAST_LAYERS = True


def max_pool_stride1(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(x, k, stride=1)``, exactly, as element-wise maxima of shifted views (separable, doubling).

    A k x k window is the maximum of windows of 1, 2, 4, ... along each axis: ``2 ceil(log2 k)``
    element-wise maxima in all, which keep the memory layout (channels last) and, on the CPU, run
    about 4x faster than the pooling kernel for these sizes (``benchmarks/bench_patch_cnn.py``).
    """
    if not FAST_LAYERS:
        return F.max_pool2d(x, k, stride=1)
    for dim in (2, 3):
        span = 1
        while span < k:
            step = min(span, k - span)  # windows of span -> span + step
            n = x.shape[dim] - step
            x = torch.maximum(x.narrow(dim, 0, n), x.narrow(dim, step, n))
            span += step
    return x


def conv_by_rows(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A valid ``conv`` with a large kernel and few outputs, as one ``1 x kw`` convolution to ``kh * O``
    outputs and ``kh`` shifted sums (fp32): the same function, computed as a wide matrix product.

    Havaei et al.'s output layer (224 maps -> 5 classes, 21x21) has 5 outputs: as a convolution it runs
    at a fraction of the CPU's speed; as 105 outputs of a 1x21 kernel it runs near it (2-3x faster).
    """
    o, c, kh, kw = conv.weight.shape
    w = conv.weight.permute(2, 0, 1, 3).reshape(kh * o, c, 1, kw)
    if x.is_contiguous(memory_format=torch.channels_last):
        w = w.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, w)
    h = x.shape[2] - kh + 1
    out = y[:, :o, :h].float()
    for i in range(1, kh):
        out = out + y[:, i * o : (i + 1) * o, i : i + h]
    if conv.bias is not None:
        out = out + conv.bias.float().view(1, -1, 1, 1)
    return out


def apply_output(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The output layer on ``x``: :func:`conv_by_rows` when it yields a map (whole slices, dense windows) with
    a large kernel and few outputs, else the layer itself (a patch's single pixel: a plain product)."""
    kh, kw = conv.kernel_size
    big = kh >= 9 and conv.out_channels <= 16 and conv.stride == (1, 1) and conv.padding == (0, 0)
    if FAST_LAYERS and big and (x.shape[-2] > kh or x.shape[-1] > kw):
        return conv_by_rows(x, conv)
    return conv(x)


class MaxoutConv2d(nn.Module):
    """A valid convolution with Maxout (Havaei Eq. 1-2; Goodfellow et al. 2013).

    Each of the ``out_channels`` output maps is the element-wise maximum over ``k`` consecutive
    convolution feature maps ``O_s, ..., O_{s+k-1}``.

    Examples:
        >>> MaxoutConv2d(4, 64, 7, k=2)(torch.zeros(1, 4, 33, 33)).shape
        torch.Size([1, 64, 27, 27])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, k: int = 2) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.k = k
        self.conv = nn.Conv2d(in_channels, out_channels * k, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, _, h, w = y.shape
        return y.view(n, self.out_channels, self.k, h, w).amax(dim=2)


class LocalPath(nn.Module):
    """Local pathway (Fig. 2): conv 7x7 + Maxout + max-pool 4x4, conv 3x3 + Maxout + max-pool 2x2.

    33x33 -> 27 -> 24 (64x24x24, the "first hidden layer") -> 22 -> 21 (64x21x21). Pooling stride 1.
    ``extra_channels`` widens the second convolution's input: LocalCascadeCNN concatenates the
    first CNN's 5x24x24 output to the first hidden layer (Fig. 3b).
    """

    def __init__(self, in_channels: int = 4, maps: int = 64, k: int = 2, extra_channels: int = 0) -> None:
        super().__init__()
        self.conv1 = MaxoutConv2d(in_channels, maps, 7, k)
        self.conv2 = MaxoutConv2d(maps + extra_channels, maps, 3, k)
        self.out_channels = maps

    def first_hidden(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_stride1(self.conv1(x), 4)

    def second(self, h: torch.Tensor) -> torch.Tensor:
        return max_pool_stride1(self.conv2(h), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first_hidden(x))


class GlobalPath(nn.Module):
    """Global pathway (Fig. 2): conv 13x13 + Maxout, no pooling (33x33 -> 160x21x21)."""

    def __init__(self, in_channels: int = 4, maps: int = 160, k: int = 2) -> None:
        super().__init__()
        self.conv = MaxoutConv2d(in_channels, maps, 13, k)
        self.out_channels = maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PatchCNN(nn.Module):
    """Common interface of Havaei et al.'s patch CNNs, and their registry.

    A subclass declared with ``arch="name"`` (``class MyCNN(PatchCNN, arch="my_cnn")``) is what
    ``model.arch=name`` builds (:meth:`build`) and the only kind of net a checkpoint's ``arch`` may name.

    Attributes:
        registry: every registered patch CNN by its ``arch``.
        arch: this class's name in the registry (``None``: not buildable by name).
        patch_size: input side that yields a single output pixel (33).
        output: the output layer (a 21x21 convolution to ``num_classes`` maps; softmax in the loss).
    """

    registry: ClassVar[dict[str, type[PatchCNN]]] = {}
    arch: ClassVar[str | None] = None
    patch_size: int = 33
    output: nn.Conv2d

    def __init_subclass__(cls, arch: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if arch is not None:
            if arch in PatchCNN.registry and PatchCNN.registry[arch] is not cls:
                raise ValueError(f"patch CNN arch {arch!r} is registered twice")
            cls.arch = arch
            PatchCNN.registry[arch] = cls

    @classmethod
    def build(cls, in_channels: int, num_classes: int, dropout: float = 0.5, k: int = 2, **options: Any) -> PatchCNN:
        """A freshly initialised net (frozen stages, if any, with random weights until loaded).

        ``options`` are the module's net options that only some nets use (``first_stage_dropout``).
        """
        return cls(in_channels, num_classes, dropout, k)

    def stage_nets(self) -> dict[str, PatchCNN]:
        """Frozen, separately trained stages: hyper-parameter naming their checkpoint -> the sub-net.

        E.g. a cascade's ``{"first_stage_ckpt": self.first}``; their weights are read in the
        module's ``setup`` (:meth:`brats_lightning.modules.patch.PatchCNNModule.preflight`).
        """
        return {}

    @property
    def margin(self) -> int:
        """Pixels lost on each side by the valid convolutions: ``(patch_size - 1) // 2``."""
        return (self.patch_size - 1) // 2

    def output_layer(self) -> nn.Module:
        """The layer re-trained alone in the second training phase."""
        return self.output


def init_havaei_(net: nn.Module, low: float = -0.005, high: float = 0.005) -> None:
    """Havaei Sec. 4: kernels ~ U(-0.005, 0.005), biases 0 (the output bias is set from label frequencies)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, low, high)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def set_output_bias_(layer: nn.Conv2d, frequencies: Sequence[float], eps: float = 1e-6) -> None:
    """Havaei Sec. 4: initialise the softmax layer's biases to the log of the label frequencies."""
    bias = layer.bias
    if bias is None:
        raise ValueError("the output layer has no bias to initialise")
    f = torch.as_tensor(list(frequencies), dtype=bias.dtype)
    if f.numel() != bias.numel():
        raise ValueError(f"{f.numel()} label frequencies for an output layer of {bias.numel()} classes")
    with torch.no_grad():
        bias.copy_(torch.log(f.clamp_min(eps) / f.sum()))


class LocalPathCNN(PatchCNN, arch="localpath"):
    """LocalPathCNN (Havaei Sec. 5.1): the local pathway alone, then the 21x21 output convolution.

    Args:
        in_channels: MR channels (4).
        num_classes: classes (5 for BRATS 2013, 4 for BraTS 2017+).
        dropout: dropout probability on the last hidden layer (Sec. 3.2).
        k: Maxout feature maps per output map.

    Examples:
        >>> LocalPathCNN()(torch.zeros(2, 4, 33, 33)).shape
        torch.Size([2, 5, 1, 1])
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 5, dropout: float = 0.5, k: int = 2) -> None:
        super().__init__()
        self.local = LocalPath(in_channels, 64, k)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Conv2d(64, num_classes, 21)
        init_havaei_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_output(self.output, self.dropout(self.local(x)))


class GlobalPathCNN(PatchCNN, arch="globalpath"):
    """GlobalPathCNN (Havaei Sec. 5.1): the global pathway alone, then the 21x21 output convolution.

    Examples:
        >>> GlobalPathCNN()(torch.zeros(2, 4, 33, 33)).shape
        torch.Size([2, 5, 1, 1])
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 5, dropout: float = 0.5, k: int = 2) -> None:
        super().__init__()
        self.glob = GlobalPath(in_channels, 160, k)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Conv2d(160, num_classes, 21)
        init_havaei_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_output(self.output, self.dropout(self.glob(x)))


class TwoPathCNN(PatchCNN, arch="twopath"):
    """TwoPathCNN (Havaei Sec. 3.1.1, Fig. 2): 4x33x33 -> 5x1x1.

    Local path (64x21x21) and global path (160x21x21) are concatenated (224x21x21) and fed to a
    21x21 output convolution with softmax. ``mf_channels`` widens the output layer's input:
    MFCascadeCNN concatenates the first CNN's 5x21x21 output right before it (Fig. 3c).

    Args:
        in_channels: input channels (4; 9 for the second stage of InputCascadeCNN).
        num_classes: classes.
        dropout: dropout probability on the concatenated hidden layer.
        k: Maxout feature maps per output map.
        local_extra_channels: extra channels at the local path's first hidden layer (LocalCascadeCNN).
        mf_channels: extra channels before the output layer (MFCascadeCNN).
        mf_dropout: apply the dropout to those extra channels too. Havaei et al. put dropout on the
            last hidden layer; the first CNN's probabilities concatenated to it are an input of the
            output layer, not hidden units, so by default they are not dropped.

    Examples:
        >>> TwoPathCNN()(torch.zeros(2, 4, 33, 33)).shape
        torch.Size([2, 5, 1, 1])
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 5,
        dropout: float = 0.5,
        k: int = 2,
        local_extra_channels: int = 0,
        mf_channels: int = 0,
        mf_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.mf_dropout = mf_dropout
        self.local = LocalPath(in_channels, 64, k, extra_channels=local_extra_channels)
        self.glob = GlobalPath(in_channels, 160, k)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Conv2d(64 + 160 + mf_channels, num_classes, 21)
        init_havaei_(self)

    def hidden(
        self, x: torch.Tensor, local_extra: torch.Tensor | None = None, mf_extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The concatenated last hidden layer (224 maps, plus cascade inputs where given)."""
        h = self.local.first_hidden(x)
        if local_extra is not None:
            h = torch.cat([h, local_extra], dim=1)
        parts = [self.local.second(h), self.glob(x)]
        if mf_extra is not None:
            parts.append(mf_extra)
        return torch.cat(parts, dim=1)

    def forward(
        self, x: torch.Tensor, local_extra: torch.Tensor | None = None, mf_extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mf_extra is None or self.mf_dropout:
            return apply_output(self.output, self.dropout(self.hidden(x, local_extra, mf_extra)))
        return apply_output(self.output, torch.cat([self.dropout(self.hidden(x, local_extra)), mf_extra], dim=1))


class AverageCNN(PatchCNN, arch="average"):
    """AverageCNN (Havaei Sec. 5.1): the mean of the softmax outputs of a separately trained
    LocalPathCNN and GlobalPathCNN.

    Its forward returns *log-probabilities* (the log of the averaged probabilities), so that
    ``softmax(forward(x))`` is the averaged distribution, like the logits of the other nets.
    """

    def __init__(self, local: LocalPathCNN, glob: GlobalPathCNN) -> None:
        super().__init__()
        self.local_net = local
        self.global_net = glob
        self.output = local.output  # nothing is trained; the attribute keeps the interface

    @classmethod
    def build(cls, in_channels: int, num_classes: int, dropout: float = 0.5, k: int = 2, **options: Any) -> AverageCNN:
        return cls(
            LocalPathCNN(in_channels, num_classes, dropout, k), GlobalPathCNN(in_channels, num_classes, dropout, k)
        )

    def stage_nets(self) -> dict[str, PatchCNN]:
        return {"local_ckpt": self.local_net, "global_ckpt": self.global_net}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (torch.softmax(self.local_net(x).float(), 1) + torch.softmax(self.global_net(x).float(), 1)) / 2
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def count_parameters(net: nn.Module) -> int:
    """Number of parameters of ``net``."""
    return sum(p.numel() for p in net.parameters())
