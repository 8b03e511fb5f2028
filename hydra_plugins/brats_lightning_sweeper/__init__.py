"""brats_lightning's resumable Optuna sweeper, as a Hydra plugin (Hydra instantiates sweepers only from
``hydra_plugins``): see :mod:`brats_lightning.sweep` and ``conf/hydra/sweeper/resumable_optuna.yaml``."""
