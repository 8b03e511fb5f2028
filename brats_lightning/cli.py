"""Command entry points (the top layer: nothing in the package imports this module).

``python -m brats_lightning`` and the ``brats-train`` console script run :func:`train_command`: the Hydra
application of :func:`brats_lightning.training.train.main`, with the resumable Optuna sweeper registered
so that ``hparams_search=...`` finds it however the package is installed.
"""

from __future__ import annotations

__all__ = ["register_sweeper", "train_command"]


def register_sweeper() -> None:
    """Make the resumable sweeper known to Hydra (``Plugins.register``).

    Hydra finds plugins by listing the ``hydra_plugins`` package, which misses the portion of an editable
    install (``pip install -e``) unless the command runs from the repository's root; registered, the sweeper
    is found from any folder. Nothing happens when the plugin package is not installed.
    """
    try:
        from hydra.core.plugins import Plugins

        from hydra_plugins.brats_lightning_sweeper import ResumableOptunaSweeper
    except ImportError:
        return
    Plugins.instance().register(ResumableOptunaSweeper)


def train_command() -> None:
    """``python -m brats_lightning [overrides]``: train and test a model (see ``conf/train.yaml``)."""
    from brats_lightning.training.train import main

    register_sweeper()
    main()
