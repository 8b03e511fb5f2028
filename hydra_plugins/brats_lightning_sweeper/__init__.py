"""brats_lightning's resumable Optuna sweeper as a Hydra plugin (``conf/hydra/sweeper/resumable_optuna.yaml``).

Hydra instantiates sweepers only from classes defined in the ``hydra_plugins`` package, so the class is
defined here, over :class:`brats_lightning.sweep.sweeper.ResumableOptunaSweeper` which does the work.
Imports go one way: brats_lightning's library never imports this package (only its command entry,
:mod:`brats_lightning.cli`, registers it).
"""

from brats_lightning.sweep.sweeper import ResumableOptunaSweeper as _ResumableOptunaSweeper

__all__ = ["ResumableOptunaSweeper"]


class ResumableOptunaSweeper(_ResumableOptunaSweeper):
    """Optuna's sweeper, continued by the same command after a kill (see :mod:`brats_lightning.sweep`)."""
