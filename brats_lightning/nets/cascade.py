"""Cascaded CNNs of Havaei et al. (Sec. 3.1.2, Fig. 3): a frozen TwoPathCNN feeds a second TwoPathCNN.

The first CNN's output probabilities are concatenated to a layer of the second CNN:

* ``InputCascadeCNN`` (Fig. 3a): first CNN on a 4x65x65 patch -> 5x33x33, concatenated to the
  second CNN's 4x33x33 input (9x33x33 input).
* ``LocalCascadeCNN`` (Fig. 3b): first CNN on a 4x56x56 patch -> 5x24x24, concatenated to the first
  hidden layer of the second CNN's local path (64+5 = 69x24x24).
* ``MFCascadeCNN`` (Fig. 3c): first CNN on a 4x53x53 patch -> 5x21x21, concatenated right before
  the output layer (224+5 = 229x21x21), like one step of mean-field inference.

The second CNN always sees the central 4x33x33 patch and predicts its centre pixel. A patch of even
side ``P`` (56) centred on pixel ``p`` covers ``p - P//2 .. p + P - 1 - P//2``; with Fig. 3b's sizes
the first CNN's 24x24 output then sits half a pixel off the local path's first hidden layer (whose
units cover 10x10 input pixels), which the paper's sizes imply and which we keep.

The first stage is frozen (``requires_grad=False``) and always runs in eval mode (no dropout), so
its output for a patch is a fixed function of the image; training may therefore precompute it for
whole slices (:meth:`CascadeCNN.first_stage_map`) instead of running it on every patch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from brats_lightning.nets.twopath import PatchCNN, TwoPathCNN

__all__ = ["CascadeCNN", "InputCascadeCNN", "LocalCascadeCNN", "MFCascadeCNN"]


class CascadeCNN(PatchCNN):
    """Common machinery of the three cascades.

    Attributes:
        first_patch: input side of the first CNN for one output pixel of the cascade.
        aux_size: side of the first CNN's output map that the second CNN consumes.
        aux_before: how far that map starts before the centre pixel (``aux_size // 2`` or less).
    """

    first_patch: int
    aux_size: int
    aux_before: int
    where: str

    def __init__(
        self,
        first: TwoPathCNN,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.5,
        k: int = 2,
        first_stage_dropout: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(first, TwoPathCNN) or first.output.out_channels != num_classes:
            raise ValueError("the first stage must be a TwoPathCNN with the same number of classes")
        if first.local.conv1.conv.in_channels != in_channels:
            raise ValueError(
                f"the first stage takes {first.local.conv1.conv.in_channels} input channels, the data has {in_channels}"
            )
        self.first = first
        for p in self.first.parameters():
            p.requires_grad_(False)
        self.num_classes = num_classes
        extra = {"input": 0, "local": 0, "mf": 0}
        extra[self.where] = num_classes
        self.second = TwoPathCNN(
            in_channels + extra["input"],
            num_classes,
            dropout,
            k,
            local_extra_channels=extra["local"],
            mf_channels=extra["mf"],
            mf_dropout=first_stage_dropout,
        )
        self.output = self.second.output
        self.patch_size = self.first_patch

    @classmethod
    def build(cls, in_channels: int, num_classes: int, dropout: float = 0.5, k: int = 2, **options: Any) -> CascadeCNN:
        first = TwoPathCNN(in_channels, num_classes, dropout, k)
        return cls(first, in_channels, num_classes, dropout, k, bool(options.get("first_stage_dropout", False)))

    def stage_nets(self) -> dict[str, PatchCNN]:
        return {"first_stage_ckpt": self.first}

    def train(self, mode: bool = True) -> CascadeCNN:
        super().train(mode)
        self.first.eval()  # frozen: no dropout, ever
        return self

    @property
    def first_pad(self) -> tuple[int, int]:
        """Context before / after the centre pixel needed by the whole cascade."""
        return self.first_patch // 2, self.first_patch - 1 - self.first_patch // 2

    @torch.no_grad()
    def first_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax output of the frozen first stage (valid convolutions, no padding)."""
        return torch.softmax(self.first(x).float(), dim=1)  # fp32 under autocast

    def first_stage_map(self, x: torch.Tensor, margin: int = 16) -> torch.Tensor:
        """First-stage probabilities of every pixel of slices ``(N, C, H, W)`` and ``margin`` pixels around.

        Returns ``(N, K, H + 2*margin, W + 2*margin)``: entry ``[.., margin + i, margin + j]`` is the
        first stage's output for the 33x33 patch centred on pixel ``(i, j)`` (zero outside the slice).
        """
        m = margin + 16
        return self.first_probs(F.pad(x, (m, m, m, m)))

    def second_stage(self, x33: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """Second-stage logits from the 33x33 (or larger, whole-slice) input and the aligned first-stage map."""
        if self.where == "input":
            return self.second(torch.cat([x33, aux], dim=1))
        if self.where == "local":
            return self.second(x33, local_extra=aux)
        return self.second(x33, mf_extra=aux)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for input of side ``first_patch`` (or larger: fully convolutional).

        ``x`` covers ``first_pad[0]`` pixels before and ``first_pad[1]`` after each output pixel.
        """
        before, _ = self.first_pad
        aux = self.first_probs(x)
        off = before - 16  # the second stage's input starts 16 pixels before the first output pixel
        h, w = x.shape[-2:]
        x33 = x[..., off : h - (self.first_patch - 1 - before - 16), off : w - (self.first_patch - 1 - before - 16)]
        return self.second_stage(x33, aux)


class InputCascadeCNN(CascadeCNN, arch="input_cascade"):
    """InputCascadeCNN (Fig. 3a): 65x65 -> first CNN 5x33x33 -> second CNN input 9x33x33 -> 5x1x1.

    Examples:
        >>> net = InputCascadeCNN(TwoPathCNN(4, 5), 4, 5)
        >>> net(torch.zeros(2, 4, 65, 65)).shape
        torch.Size([2, 5, 1, 1])
    """

    first_patch = 65
    aux_size = 33
    aux_before = 16
    where = "input"


class LocalCascadeCNN(CascadeCNN, arch="local_cascade"):
    """LocalCascadeCNN (Fig. 3b): 56x56 -> first CNN 5x24x24 -> local path hidden layer 69x24x24 -> 5x1x1.

    Examples:
        >>> net = LocalCascadeCNN(TwoPathCNN(4, 5), 4, 5)
        >>> net(torch.zeros(2, 4, 56, 56)).shape
        torch.Size([2, 5, 1, 1])
    """

    first_patch = 56
    aux_size = 24
    aux_before = 12
    where = "local"


class MFCascadeCNN(CascadeCNN, arch="mf_cascade"):
    """MFCascadeCNN (Fig. 3c): 53x53 -> first CNN 5x21x21 -> before the output layer 229x21x21 -> 5x1x1.

    Examples:
        >>> net = MFCascadeCNN(TwoPathCNN(4, 5), 4, 5)
        >>> net(torch.zeros(2, 4, 53, 53)).shape
        torch.Size([2, 5, 1, 1])
    """

    first_patch = 53
    aux_size = 21
    aux_before = 10
    where = "mf"
