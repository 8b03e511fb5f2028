"""LightningModule for Shen et al.'s (symmetry-driven) FCN and the slice nets that followed it.

``arch`` chooses the net: ``fcn`` (Shen et al.'s, the papers' default), ``unet`` (Shen et al.'s VGG
encoder with a U-Net decoder: :class:`~brats_lightning.nets.unet.ShenUNet`) or ``dynunet`` (MONAI's
DynUNet in 2D, nnU-Net's net: the modern reference). ``outputs`` chooses what it predicts: a softmax
over the classes (the papers), or the BraTS regions (whole tumour, core, enhancing) as chained
sigmoids (:func:`~brats_lightning.inference.volume.region_chain`, trained with ``loss=dice_bce``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from brats_lightning.data.contract import SegmentationData
from brats_lightning.errors import ConfigError
from brats_lightning.inference.decision import region_chain, region_classes
from brats_lightning.inference.volume import InputPadding
from brats_lightning.modules.losses import SegmentationLoss
from brats_lightning.modules.options import FCNOptions
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.nets.fcn import ShenFCN, load_vgg16_weights
from brats_lightning.nets.unet import ShenUNet, dynunet_2d

#: the nets ``model.arch`` builds
ARCHS: tuple[str, ...] = ("fcn", "unet", "dynunet")
#: what the net predicts: class logits (softmax) or region logits (chained sigmoids)
OUTPUTS: tuple[str, ...] = ("softmax", "regions")

__all__ = ["FCNModule"]


class FCNModule(SegmentationModule):
    """Trains :class:`~brats_lightning.nets.fcn.ShenFCN` on 2D axial slices.

    Shen et al. Sec. 2.1 and 3.1: per-pixel categorical cross entropy (``loss="ce"``; ``"ce_dice"``
    adds a soft Dice on the BraTS regions: :mod:`brats_lightning.modules.losses`), Adam with a constant learning
    rate of 1e-3 (``BudgetSchedule`` anneals it over a time budget), downsampling path initialised
    from VGG-16 (when ``vgg_weights`` names a local torchvision state dict; otherwise He
    initialisation). Inference pads each slice to a multiple of ``2 ** (n_blocks - 1)`` and runs it whole.

    Args:
        in_channels: 4 images, or 8 with symmetry maps (set by the data config).
        num_classes: number of classes of the label convention.
        n_blocks: 3 or 4 VGG blocks.
        up_channels: width of the upsampling paths' convolutions.
        width: channel multiplier (1.0 = paper).
        upsample_mode: ``"nearest"`` (Keras ``UpSampling2D``) or ``"bilinear"``.
        lr: Adam learning rate.
        vgg_weights: path of a torchvision-format VGG-16 state dict, or ``None``.
        loss: ``"ce"`` (the paper) or ``"ce_dice"`` (softmax outputs), ``"dice_bce"`` (region outputs)
            (:class:`~brats_lightning.modules.losses.SegmentationLoss`).
        dice_weight: weight of the region Dice term.
        region_weights: the whole tumour's, core's and enhancing tumour's weights in the Dice term (e.g. ``[1, 1, 2]``).
        arch: ``"fcn"`` (Shen et al.), ``"unet"`` (their encoder, a U-Net decoder) or ``"dynunet"`` (MONAI).
        outputs: ``"softmax"`` (class probabilities, argmax) or ``"regions"`` (chained region sigmoids,
            decided by region thresholds).
        levels: resolution levels of ``dynunet`` (``2 ** (levels - 1)`` divides the input sides).
        compile: run the net through ``torch.compile`` (inductor) in training and inference.
        convention: label convention (regions of the metrics).
        inference_batch_size: slices per forward pass at inference.
        test_hd95: compute HD95 at test time.
        channels_last: run the net in channels_last memory format (faster in bf16).
        lesion_metrics: also compute the lesion-wise metrics at test time.
        postprocess: the clean-up of test predictions (:class:`~brats_lightning.inference.cleanup.PostprocessOptions`).
        name: the method's name in tables and reports.
    """

    options_schema = FCNOptions

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 4,
        n_blocks: int = 3,
        up_channels: int = 64,
        width: float = 1.0,
        upsample_mode: str = "nearest",
        lr: float = 1e-3,
        vgg_weights: str | None = None,
        convention: str = "brats2017",
        inference_batch_size: int = 16,
        test_hd95: bool = True,
        channels_last: bool = True,
        lesion_metrics: bool = False,
        postprocess: dict | None = None,
        name: str | None = None,
        loss: str = "ce",
        dice_weight: float = 1.0,
        region_weights: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
        arch: str = "fcn",
        outputs: str = "softmax",
        levels: int = 5,
        compile: bool = False,
    ) -> None:
        super().__init__(convention, inference_batch_size, test_hd95, channels_last, lesion_metrics, postprocess, name)
        self.save_hyperparameters()
        self.check_options()
        if num_classes != self.convention.num_classes:
            raise ConfigError(
                f"num_classes={num_classes} but convention {convention} has {self.convention.num_classes}"
            )
        if arch not in ARCHS:
            raise ConfigError(f"model.arch must be one of {list(ARCHS)}, got {arch!r}")
        if outputs not in OUTPUTS:
            raise ConfigError(f"model.outputs must be one of {list(OUTPUTS)}, got {outputs!r}")
        if (outputs == "regions") != (loss == "dice_bce"):
            raise ConfigError(
                f"model.loss={loss} does not suit model.outputs={outputs}: region outputs train with loss=dice_bce, "
                "softmax outputs with ce or ce_dice"
            )
        if outputs == "regions":
            try:
                region_classes(self.convention)
            except ValueError as e:
                raise ConfigError(f"model.outputs=regions: {e}") from None
        self.outputs = outputs
        self.use_compile = bool(compile)
        self.decision = "regions" if outputs == "regions" else "argmax"
        out_channels = 3 if outputs == "regions" else num_classes
        self.net: ShenFCN | ShenUNet | torch.nn.Module
        if arch == "fcn":
            self.net = ShenFCN(in_channels, out_channels, n_blocks, up_channels, width, upsample_mode)
        elif arch == "unet":
            self.net = ShenUNet(in_channels, out_channels, n_blocks, width)
        else:
            self.net = dynunet_2d(in_channels, out_channels, levels, width)
        self._divisor = getattr(self.net, "divisor", 2 ** (levels - 1))
        self._net_name = (
            f"{levels}-level DynUNet"
            if arch == "dynunet"
            else f"{n_blocks}-block {dict(fcn='FCN', unet='U-Net')[arch]}"
        )
        self._set_layout()
        self.lr = lr
        self.vgg_weights = vgg_weights
        if vgg_weights and arch == "dynunet":
            raise ConfigError("model.vgg_weights: VGG-16 initialisation needs arch=fcn or unet (Shen et al.'s encoder)")
        try:
            self.loss = SegmentationLoss(self.convention, loss, dice_weight, region_weights)
        except ValueError as e:
            raise ConfigError(f"model.loss: {e}") from None

    def prepare_for_inference(self) -> FCNModule:
        """Batch norms folded into the convolutions: the same outputs, one pass less per feature map."""
        if isinstance(self.net, (ShenFCN, ShenUNet)):
            self.net.fuse_batchnorm_()
        return self.eval()

    def net_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of padded slices: a softmax, or the chained region sigmoids (fp32)."""
        logits = self.run_net(x)
        if self.outputs == "regions":
            return region_chain(logits, self.convention)
        return torch.softmax(logits.float(), dim=1)

    def preflight(self, datamodule: object | None = None) -> None:
        """The training crop must suit the pooling; the VGG-16 file must exist."""
        d = self._divisor
        crop = None
        if isinstance(datamodule, SegmentationData) and datamodule.mode == "slices":
            crop = datamodule.crop_size
        if crop is not None and any(int(c) % d for c in crop):
            raise ConfigError(
                f"data.crop_size={list(crop)}: the {self._net_name} needs multiples of {d} "
                f"(e.g. {[max(d, int(c) // d * d) for c in crop]})"
            )
        if self.vgg_weights and not Path(self.vgg_weights).is_file():
            raise ConfigError(f"model.vgg_weights: {self.vgg_weights} is not a file")

    def setup(self, stage: str) -> None:
        # VGG-16 initialisation is part of training from scratch, not of restoring a checkpoint.
        if stage == "fit" and self.vgg_weights and getattr(self.trainer, "ckpt_path", None) is None:
            n = load_vgg16_weights(self.net, self.vgg_weights)  # type: ignore[arg-type]
            self.print(f"Initialised {n} downsampling convolutions from {self.vgg_weights}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.layout(x))

    @property
    def input_padding(self) -> InputPadding:
        """Slices are zero-padded to a multiple of the pooling factor (``2 ** (n_blocks - 1)``)."""
        return InputPadding(divisor=self._divisor)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.run_net(x), y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)
