"""``experiment=real_fast``: a cross-validation in one command, one budget, one folder (see :mod:`.run`)."""

from brats_lightning.crossval.run import run_cross_validation

__all__ = ["run_cross_validation"]
