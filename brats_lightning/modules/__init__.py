"""LightningModules wrapping the nets; importing this package registers them for checkpoint loading."""

from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.modules.segmentation import SegmentationModule

__all__ = ["SegmentationModule", "FCNModule", "PatchCNNModule"]
