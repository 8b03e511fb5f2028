"""LightningModules wrapping the nets.

Importing this package imports every module in it, which registers each
:class:`~brats_lightning.modules.segmentation.SegmentationModule` subclass for checkpoint loading
(:mod:`brats_lightning.load.checkpoint`: a checkpoint may only name a registered class).
"""

from __future__ import annotations

import importlib
import pkgutil

from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.modules.segmentation import SegmentationModule

__all__ = ["SegmentationModule", "FCNModule", "PatchCNNModule"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
