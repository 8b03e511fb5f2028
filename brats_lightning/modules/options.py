"""The models' hyper-parameters, declared once: what ``model.*`` may be and what a checkpoint may store.

Each registered :class:`~brats_lightning.modules.segmentation.SegmentationModule` names its schema
(:attr:`options_schema <brats_lightning.modules.segmentation.SegmentationModule.options_schema>`): the module checks
its own keyword arguments against it when it is built (``model.width=0`` is one line naming ``model.width``), the
command schema (:mod:`brats_lightning.options`) checks ``model.*`` with it before any work, and
:mod:`brats_lightning.load.checkpoint` checks a checkpoint's stored hyper-parameters with it before anything is built
from them (``width: 1000`` is refused naming the file, not allocated). The fields are the modules' ``__init__``
arguments (a test keeps them equal), with the ranges that make sense for the papers' nets.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, field_validator

from brats_lightning.data.labels import CONVENTIONS, get_convention
from brats_lightning.inference.cleanup import PostprocessOptions
from brats_lightning.modules.losses import LOSSES
from brats_lightning.nets import PatchCNN
from brats_lightning.schema import Int, Number, Strict

__all__ = ["FCNOptions", "ModuleOptions", "PatchOptions"]

#: a path a model reads (stage checkpoints, VGG-16 weights): a string, never followed here
ModelPath = Annotated[str, Field(min_length=1, max_length=4096)]
Rate = Annotated[Number, Field(gt=0, le=10)]
Fraction = Annotated[Number, Field(ge=0, lt=1)]


class ModuleOptions(Strict):
    """What every segmentation module takes (:class:`~brats_lightning.modules.segmentation.SegmentationModule`)."""

    in_channels: Annotated[Int, Field(ge=1, le=64)] = 4
    num_classes: Annotated[Int, Field(ge=2, le=16)] = 4
    convention: Annotated[str, Field(min_length=1, max_length=64)] = "brats2017"
    inference_batch_size: Annotated[Int, Field(ge=1, le=4096)] = 16
    test_hd95: StrictBool = True
    channels_last: StrictBool = True
    lesion_metrics: StrictBool = False
    postprocess: PostprocessOptions | None = None
    name: Annotated[str, Field(max_length=200)] | None = None
    compile: StrictBool = False
    lr: Rate = 1e-3

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        try:
            get_convention(v)
        except KeyError:
            raise ValueError(f"unknown label convention {v!r} (expected one of {sorted(CONVENTIONS)})") from None
        return v


class FCNOptions(ModuleOptions):
    """:class:`~brats_lightning.modules.fcn.FCNModule`: Shen et al.'s FCN (Sec. 2.2: 3 or 4 VGG-16 blocks; 1-2 for
    quick runs), its U-Net and DynUNet variants."""

    n_blocks: Annotated[Int, Field(ge=1, le=4)] = 3
    up_channels: Annotated[Int, Field(ge=1, le=1024)] = 64
    # a multiple of the paper's channels; 4x is 16x the FLOPs of the paper's net
    width: Annotated[Number, Field(gt=0, le=4)] = 1.0
    upsample_mode: Literal["nearest", "bilinear"] = "nearest"
    vgg_weights: ModelPath | None = None
    loss: Literal[LOSSES] = "ce"  # type: ignore[valid-type]
    dice_weight: Annotated[Number, Field(ge=0, le=100)] = 1.0
    region_weights: Annotated[
        tuple[Annotated[Number, Field(ge=0, le=100)], ...], Field(strict=False, min_length=3, max_length=3)
    ] = (1.0, 1.0, 1.0)
    arch: Literal["fcn", "unet", "dynunet"] = "fcn"
    outputs: Literal["softmax", "regions"] = "softmax"
    levels: Annotated[Int, Field(ge=2, le=8)] = 5


class PatchOptions(ModuleOptions):
    """:class:`~brats_lightning.modules.patch.PatchCNNModule`: Havaei et al.'s patch CNNs and cascades (Sec. 3.1-3.3;
    training Sec. 3.4: SGD with momentum, L1 + L2, max-norm, dropout)."""

    arch: Annotated[str, Field(min_length=1, max_length=64)] = "twopath"
    patch_size: Annotated[Int, Field(ge=1, le=1024)] = 33
    dropout: Fraction = 0.5
    # Maxout pieces (Sec. 3.1: K = 2 in the paper's nets)
    k: Annotated[Int, Field(ge=1, le=16)] = 2
    lr: Rate = 0.005
    lr_schedule: Literal["linear", "exponential", "constant"] = "linear"
    lr_decay: Annotated[Number, Field(gt=0, le=1)] = 0.1
    lr_decay_epochs: Annotated[Int, Field(ge=1, le=100_000)] = 10
    momentum: Fraction = 0.5
    final_momentum: Fraction = 0.9
    momentum_epochs: Annotated[Int, Field(ge=0, le=100_000)] = 10
    l1: Annotated[Number, Field(ge=0, le=1)] = 1e-6
    l2: Annotated[Number, Field(ge=0, le=1)] = 1e-5
    max_norm: Annotated[Number, Field(gt=0, le=1000)] | None = 1.9365
    local_ckpt: ModelPath | None = None
    global_ckpt: ModelPath | None = None
    first_stage_ckpt: ModelPath | None = None
    first_stage_cache: StrictBool = True
    first_stage_dropout: StrictBool = False
    inference_batch_size: Annotated[Int, Field(ge=1, le=4096)] = 4

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        if v not in PatchCNN.registry:
            raise ValueError(f"unknown patch CNN {v!r} (expected one of {sorted(PatchCNN.registry)})")
        return v
