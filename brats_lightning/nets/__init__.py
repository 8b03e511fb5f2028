"""The nets: plain ``nn.Module``s, no Lightning (Shen et al.'s FCN, Havaei et al.'s patch CNNs).

Importing this package imports every module in it, so that every patch CNN declared with
``class MyCNN(PatchCNN, arch="my_cnn")`` in a file of this folder is registered
(:attr:`~brats_lightning.nets.twopath.PatchCNN.registry`): ``model.arch=my_cnn`` then builds it.
"""

from __future__ import annotations

import importlib
import pkgutil

from brats_lightning.nets.twopath import PatchCNN

__all__ = ["PatchCNN", "patch_net_class"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def patch_net_class(arch: str) -> type[PatchCNN]:
    """The registered patch CNN ``arch`` names.

    Raises:
        KeyError: no such net; the message lists the registered ones.
    """
    try:
        return PatchCNN.registry[arch]
    except KeyError:
        raise KeyError(f"unknown patch CNN {arch!r}; expected one of {sorted(PatchCNN.registry)}") from None
